"""Package-level contracts: no import side effects, flat API, no tfmot."""

import pathlib
import subprocess
import sys

import dkm_tf

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_has_no_side_effects():
    code = ("import os, sys; before = dict(os.environ); import dkm_tf; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy'; "
            "assert dict(os.environ) == before, 'env changed'; print(dkm_tf.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == dkm_tf.__version__


def test_every_public_name_resolves():
    for name in dkm_tf.__all__:
        assert getattr(dkm_tf, name) is not None, name
    assert sorted(dkm_tf.__all__) == dkm_tf.__all__


def test_library_never_imports_tfmot():
    offenders = [str(p) for p in (ROOT / "dkm_tf").rglob("*.py")
                 if "tensorflow_model_optimization" in p.read_text()]
    assert offenders == []


def test_load_model_in_a_fresh_process(tmp_path):
    # saved here (this process has TensorFlow imported already), loaded in a fresh one: the
    # loading process has registered nothing before dkm_tf.load_model
    import numpy as np

    model, out = tmp_path / "m.keras", tmp_path / "out.npy"
    m = dkm_tf.models.digits_cnn()
    dkm_tf.attach_regularizer(m, 4, lam=0.1)
    w = dkm_tf.cluster_weights(m, 4)
    w.save(str(model))
    np.save(str(out), w.predict(np.ones((2, 8, 8, 1), "float32"), verbose=0))
    load = ("import dkm_tf, numpy as np; m = dkm_tf.load_model(r'%s'); "
            "assert type(m.layers[0]).__name__ == 'ClusterWeights'; "
            "np.testing.assert_allclose(m.predict(np.ones((2, 8, 8, 1), 'float32'), verbose=0),"
            " np.load(r'%s'), atol=1e-6)")
    proc = subprocess.run([sys.executable, "-c", load % (model, out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
