"""dkm_tf on Keras' PyTorch backend: the scenarios of tests/test_backend_jax.py (training
wrapper, regularizer, callbacks, distillation, post-training sharing, serialization, the export
refusal) and TensorFlow's numbers.

Runs when torch is importable here, or in the interpreter named by ``DKM_TF_TORCH_PYTHON``
(a virtualenv with torch, keras and dkm_tf's own requirements; TensorFlow not needed — it also
shows that training never needs TensorFlow). CI installs torch 2.13.0+cpu in a venv of its own
(``.venv-torch``; README, "Backends": its setuptools>=77 requirement would upgrade the test
venv's setuptools to one without the pkg_resources that the fer wheel imports).
"""

import importlib.util
import os

import pytest

from tests import _backend_checks as bc

PYTHON = os.environ.get("DKM_TF_TORCH_PYTHON") or None
if PYTHON is None and importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed and DKM_TF_TORCH_PYTHON is not set: the PyTorch "
                "backend is not tested", allow_module_level=True)

@pytest.fixture(scope="module")
def torch_results():
    return bc.run_scenarios("torch", bc.SCENARIOS, python=PYTHON)


@pytest.fixture(scope="module")
def tf_results():
    return bc.run_scenarios("tensorflow", bc.TF_SCENARIOS)


@pytest.mark.parametrize("name", bc.SCENARIOS)
def test_scenario(name, torch_results):
    """wrapper fit + strip, regularizer penalty = numpy reference, callbacks, distillation,
    share_weights, .keras save/load, soft assignment, Fisher weighting, and export refused
    with a clear error (energy works): the checks of tests/_backend_checks.py."""
    bc.check(torch_results, name, "torch")


def test_same_numbers_as_tensorflow(torch_results, tf_results):
    bc.check_same_as_tensorflow(torch_results, tf_results)


_TORCH_LAYERS = r"""
import json, sys
import numpy as np, keras, dkm_tf

out = {}
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 5, 3)).astype("float32")
y = rng.integers(0, 2, 8)
L = keras.layers
inp = keras.Input((5, 3))
nets = {"gru": L.GRU(4, name="rnn")(inp), "lstm": L.LSTM(4, name="rnn")(inp),
        "mha": L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 3, name="mha")(inp, inp))}
for name, h in nets.items():
    m = keras.Model(inp, L.Dense(2, name="out")(L.Flatten()(h) if h.ndim > 2 else h))
    m.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in m.get_weights()])
    w = dkm_tf.cluster_weights(m, 3)
    w.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w.fit(x, y, epochs=1, batch_size=4, verbose=0)
    plain, pals = dkm_tf.strip_clustering(w)
    out[name] = {p.name: int(np.unique(p.decode()).size) for p in pals}
# soft assignment with row units: strip's float64 snap
conv = keras.Sequential([keras.Input((5, 5, 2)), L.Conv2D(4, 3, name="c")])
for gran in ("per_tensor", "per_channel"):
    w = dkm_tf.cluster_weights(conv, 2, assignment="soft", temperature=0.05, unit="row",
                               granularity=gran)
    plain, pals = dkm_tf.strip_clustering(w)
    out[f"soft_rows_{gran}"] = int(len(np.unique(pals[0].indices)))
# a compiled wrapped model saved here loads in TensorFlow (compile config of another backend)
w = dkm_tf.cluster_weights(keras.Sequential([keras.Input((6,)), L.Dense(3, name="d")]), 4)
w.compile(keras.optimizers.Adam(1e-3), "mse")
w.fit(rng.normal(size=(8, 6)).astype("float32"), rng.normal(size=(8, 3)).astype("float32"),
      verbose=0)
w.save(sys.argv[1])
xs = rng.normal(size=(4, 6)).astype("float32")
np.save(sys.argv[2], np.stack([xs, np.pad(np.asarray(w.predict(xs, verbose=0)), ((0, 0), (0, 3)))]))
print(json.dumps(out))
"""


def test_recurrent_attention_soft_rows_and_a_saved_model_on_torch(tmp_path):
    """Found by a probe: torch refused the wrapper's variable names of cell / attention
    weights ("cell.kernel_codebook": no dots), and strip's float64 snap of soft row units
    mixed dtypes (Keras' torch maximum returns float32). A compiled model saved on torch loads
    in this TensorFlow process, uncompiled, with a warning (its optimizer is torch's)."""
    import json
    import subprocess
    import sys

    import numpy as np

    import dkm_tf

    script = tmp_path / "torch_layers.py"
    script.write_text(_TORCH_LAYERS)
    saved, io_ = tmp_path / "w.keras", tmp_path / "io.npy"
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=bc.REPO)
    proc = subprocess.run([PYTHON or sys.executable, str(script), str(saved), str(io_)],
                          cwd=bc.REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("gru", "lstm", "mha"):
        assert out[name] and all(1 <= k <= 3 for k in out[name].values()), out
    assert len(out["mha"]) == 5 and len(out["gru"]) == 3 and len(out["lstm"]) == 3, out  # + "out"
    assert out["soft_rows_per_tensor"] <= 2 and out["soft_rows_per_channel"] <= 2
    with pytest.warns(UserWarning, match="another Keras backend.*loaded without compile"):
        model = dkm_tf.load_model(saved)
    xs, want = np.load(io_)
    got = np.asarray(model(xs))
    np.testing.assert_allclose(got, want[:, :3], rtol=1e-5, atol=1e-6)
