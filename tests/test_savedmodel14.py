"""Clustered models leaving the .keras format: SavedModel, .h5, .weights.h5, unstripped export.

Checked (TensorFlow 2.21, Keras 3.15): ``model.export(format="tf_saved_model")`` of a wrapped
(hard), kernel-clustered, stripped or regularized model reloads and serves Keras' outputs at
batch 1 and 4, and its ``from_saved_model`` .tflite keeps <= K values per clustered tensor;
``to_tflite`` and the export command line refuse a model still holding dkm_tf training layers
(a soft one used to be written unclustered, a hard one with wrong byte counts) and a
SavedModel folder, saying what to give instead; ``inspect_tflite`` flags a file whose weights
are unassigned resource variables (``tf.saved_model.save`` of a Keras 3 model, converted: all
NaN); ``tf.saved_model.save`` of a ``ClusterWeights`` model (hard and soft) serves Keras'
outputs at batch 1 and 4.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.testing import run_tflite_batch, tf_backend_only

pytestmark = tf_backend_only()

K = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base():
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    return keras.Sequential([keras.Input((8, 8, 3)),
                             L.Conv2D(6, 3, activation="relu", name="c1"),
                             L.Conv2D(8, 3, name="c2"), L.Flatten(name="f"),
                             L.Dense(5, name="fc")], name="net")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    import dkm_tf

    reg = _base()
    dkm_tf.attach_regularizer(reg, K, include_dense=True)
    return {"hard": dkm_tf.cluster_weights(_base(), K),
            "soft": dkm_tf.cluster_weights(_base(), K, assignment="soft", temperature=0.05),
            "kernel": dkm_tf.cluster_weights(_base(), K, unit="kernel", codebook="shared"),
            "stripped": dkm_tf.strip_clustering(dkm_tf.cluster_weights(_base(), K))[0],
            "reg": reg}


def _run(content, xs):
    return run_tflite_batch(content, xs)


def _rel(got, want):
    return float(np.max(np.abs(np.asarray(got) - np.asarray(want))) / np.max(np.abs(want)))


def _weight_distinct(content):
    from dkm_tf.export import inspect_tflite

    return [t["distinct"] for t in inspect_tflite(bytes(content)).tensors
            if t["role"] == "weight"]


# --------------------------------------------------------------- model.export (SavedModel)
@pytest.mark.parametrize("name", ["hard", "kernel", "stripped", "reg"])
def test_keras_export_serves_keras_outputs_and_converts(models, x, tmp_path, name):
    import tensorflow as tf

    model = models[name]
    ref1, ref4 = np.asarray(model(x[:1])), np.asarray(model(x))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    key = next(iter(serve.structured_input_signature[1]))
    for xs, ref in ((x[:1], ref1), (x, ref4)):
        out = next(iter(serve(**{key: tf.constant(xs)}).values()))
        assert _rel(out, ref) <= 1e-6, name
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert()
    assert _rel(_run(content, x[:1]), ref1) <= 1e-5 and _rel(_run(content, x), ref4) <= 1e-5
    distinct = _weight_distinct(content)
    assert len(distinct) == 3
    if name in ("hard", "stripped"):  # per-tensor K = 4: the converter folded the gathers
        assert max(distinct) <= K, distinct


# ------------------------------------------------------------ to_tflite of a wrapped model
@pytest.mark.parametrize("name,fmt", [("hard", "float"), ("soft", "float"),
                                      ("kernel", "float"), ("hard", "palettized"),
                                      ("soft", "int8")])
def test_to_tflite_refuses_training_layers_and_says_strip(models, x, tmp_path, name, fmt):
    # old: float exports were written (soft: 30,512 bytes, 640 distinct values in a tensor,
    # the DKM iteration in the graph; hard: analytic 9,996 B for a 7,168 B file), and
    # palettized / int8 with palettes_of(model) said "palette 'c1/kernel' names no weight"
    import dkm_tf

    model = models[name]
    palettes = dkm_tf.palettes_of(model) if fmt != "float" else None
    with pytest.raises(ValueError, match=r"(?s)Expected a stripped model.*'cluster_c1' "
                                         r"\(Cluster.*strip_clustering\(model\)") as err:
        dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", format=fmt, palettes=palettes,
                                sample_inputs=x)
    assert ("soft assignment" in str(err.value)) == (name == "soft")
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="Expected a stripped model"):
        dkm_tf.export.export_all(model, None, tmp_path, sample_inputs=x, targets=["float"])


@pytest.mark.parametrize("name", ["hard", "soft", "kernel"])
def test_the_fix_the_refusal_gives_exports_k_values(models, x, tmp_path, name):
    import dkm_tf

    plain, palettes = dkm_tf.strip_clustering(models[name])
    path = tmp_path / "m.tflite"
    rep = dkm_tf.export.to_tflite(plain, path, format="float", sample_inputs=x)
    content = path.read_bytes()
    for xs in (x[:1], x):
        assert _rel(_run(content, xs), plain(xs)) <= 1e-5
    n_weights = sum(int(np.prod(p.layout.kernel_shape)) for p in palettes)
    assert rep.n_params == plain.count_params() and n_weights <= rep.n_params
    if name != "kernel":  # kernel units: scale x centroid per kernel, not K scalars
        assert max(_weight_distinct(content)) <= K
    dkm_tf.export.to_tflite(plain, tmp_path / "p.tflite", format="palettized",
                            palettes=palettes, sample_inputs=x)
    got = _run((tmp_path / "p.tflite").read_bytes(), x)
    assert _rel(got, plain(x)) <= 1e-4


# ----------------------------------------------------------------- the export command line
def _save_all(models, folder):
    paths = {}
    for name in ("hard", "soft", "kernel", "reg"):
        paths[name] = os.path.join(folder, f"{name}.keras")
        models[name].save(paths[name])
    paths["hard.h5"] = os.path.join(folder, "hard.h5")
    models["hard"].save(paths["hard.h5"])  # legacy HDF5: saves and loads with dkm_tf
    return paths


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    return _save_all(models, str(tmp_path_factory.mktemp("saved")))


@pytest.mark.parametrize("name,cls", [("hard", "ClusterWeights"), ("soft", "ClusterWeights"),
                                      ("kernel", "ClusterKernels"),
                                      ("hard.h5", "ClusterWeights")])
def test_cli_refuses_a_file_saved_while_clustering_before_loading(saved, tmp_path, monkeypatch,
                                                                   name, cls):
    # old: Keras' 10 kB "could not be deserialized" / "Unknown layer" in a fresh process
    # (export does not import the training code); here (classes registered) a float file
    import keras

    from dkm_tf.export.cli import run_to_tflite

    def no_load(*args, **kwargs):
        raise AssertionError("loaded before refusing")

    monkeypatch.setattr(keras.models, "load_model", no_load)
    out = tmp_path / "o.tflite"
    recipe = "strip_clustering"  # ("reg": exported since, tests/test_review14_fixes.py)
    with pytest.raises(ValueError, match=rf"(?s)model_path.*{cls} '.*{recipe}"):
        run_to_tflite(saved[name], str(out), format="float")
    assert not out.exists()


def test_cli_recipe_from_the_message_exports_and_verifies(saved, models, x, tmp_path):
    import dkm_tf
    from dkm_tf.export.cli import run_to_tflite

    plain, palettes = dkm_tf.strip_clustering(dkm_tf.load_model(saved["hard.h5"]))
    plain.save(tmp_path / "plain.keras")
    with open(tmp_path / "palettes.json", "w") as f:
        json.dump([p.to_dict() for p in palettes], f)
    np.save(tmp_path / "x.npy", x)
    rep = run_to_tflite(str(tmp_path / "plain.keras"), str(tmp_path / "o.tflite"),
                        palettes_path=str(tmp_path / "palettes.json"),
                        samples_path=str(tmp_path / "x.npy"))
    content = (tmp_path / "o.tflite").read_bytes()
    want = np.asarray(models["hard"](x))
    assert rep.format == "palettized" and len(rep.tensors) == 3
    assert _rel(_run(content, x[:1]), want[:1]) <= 1e-4 and _rel(_run(content, x), want) <= 1e-4


def test_cli_script_message_is_short_in_a_fresh_process(saved, tmp_path):
    # a fresh process has not registered dkm_tf's classes: old 10,000+ characters of config
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",  # this checkout's dkm_tf
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    env.pop("DKM_TF_TRACEBACK", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_tflite.py"),
                           f"--model={saved['hard']}", "--format=float",
                           f"--output={tmp_path / 'o.tflite'}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    line = [s for s in proc.stderr.splitlines() if s.startswith("to_tflite.py: error")]
    assert proc.returncode == 1 and len(line) == 1, proc.stderr[-2000:]
    assert "ClusterWeights 'cluster_c1'" in line[0] and "strip_clustering" in line[0]
    assert len(line[0]) < 1200 and not (tmp_path / "o.tflite").exists()


def test_cli_script_loads_a_factorised_model_in_a_fresh_process(tmp_path):
    # old: Keras' "could not be deserialized ... FactorisedConv2D" (never registered there)
    import keras

    import dkm_tf

    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 8)), L.Conv2D(8, 3, name="c1"), L.Flatten(),
                              L.Dense(5, name="fc")], name="fnet")
    res = dkm_tf.share_weights(model, K, unit="kernel", codebook="shared")
    fact, _ = dkm_tf.factorise_convs(res.model, res.palettes, force=True)
    assert type(fact.layers[0]).__name__ == "FactorisedConv2D"
    fact.save(tmp_path / "f.keras")
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_tflite.py"),
                           f"--model={tmp_path / 'f.keras'}", "--format=float",
                           f"--samples={tmp_path / 'x.npy'}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    content = (tmp_path / "f.float.tflite").read_bytes()
    for xs in (x[:1], x):
        assert _rel(_run(content, xs), fact(xs)) <= 1e-5


def test_savedmodel_folder_refused_by_name(models, tmp_path):
    # old: "Expected a model file, not a folder" (load_model, the exporter) and
    # "Expected a .tflite file, not a folder" (inspect), nothing saying what it is
    import dkm_tf
    from dkm_tf.export.cli import run_to_tflite

    sm = str(tmp_path / "sm")
    models["stripped"].export(sm, format="tf_saved_model", verbose=False)
    for call in (lambda: run_to_tflite(sm, str(tmp_path / "o.tflite"), format="float"),
                 lambda: dkm_tf.load_model(sm), lambda: dkm_tf.export.inspect_tflite(sm)):
        with pytest.raises(ValueError, match=r"SavedModel folder"):
            call()
    with pytest.raises(ValueError, match=r"TFSMLayer"):
        dkm_tf.load_model(sm)
    assert sorted(os.listdir(tmp_path)) == ["sm"]


# ----------------------------------------------------------- tf.saved_model.save + convert
def test_inspect_flags_a_file_whose_weights_are_unassigned_variables(models, x, tmp_path):
    # tf.saved_model.save of a Keras 3 model, then from_saved_model: the weights stay
    # resource variables nothing assigns; the interpreters read uninitialised memory (NaN in
    # most runs, -inf in one CI run), no error
    import tensorflow as tf

    import dkm_tf

    tf.saved_model.save(models["stripped"], str(tmp_path / "sm"))
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert()
    got = _run(content, x[:1])  # upstream behaviour (undefined values): why the note exists
    assert not np.allclose(got, np.asarray(models["stripped"](x[:1])), rtol=1e-2, atol=1e-3)
    info = dkm_tf.export.inspect_tflite(content)
    notes = getattr(info, "notes", ())  # old: no such field, nothing said
    assert len(notes) == 1 and "READ_VARIABLE" in notes[0] and "to_tflite" in notes[0]
    assert "note: the file reads 3 resource variable(s)" not in info.summary()  # 6 reads
    assert "note: the file reads 6 resource variable(s)" in info.summary()
    good = tmp_path / "g.tflite"
    dkm_tf.export.to_tflite(models["stripped"], good, format="float", sample_inputs=x)
    assert dkm_tf.export.inspect_tflite(good).notes == ()


@pytest.mark.parametrize("name", ["hard", "soft"])
def test_tf_saved_model_save_of_a_cluster_weights_model(models, x, tmp_path, name):
    # old: AssertionError "Tried to export a function which references an 'untracked'
    # resource" (kernel_indices: the codebook / index variables lived only in _Slot objects)
    import tensorflow as tf

    model = models[name]
    tf.saved_model.save(model, str(tmp_path / "sm"))
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    for xs in (x[:1], x):
        (got,) = serve(tf.constant(xs)).values()
        assert got.shape == (len(xs), 5)
        assert _rel(got, model(xs)) <= 1e-5


# ---------------------------------------------------------------------------- .weights.h5
def test_weights_h5_round_trips_only_into_the_same_clustering(models, x, tmp_path):
    import dkm_tf

    path = str(tmp_path / "m.weights.h5")
    models["hard"].save_weights(path)
    fresh = dkm_tf.cluster_weights(_base(), K, seed=5)  # other k-means: replaced by the file
    fresh.load_weights(path)
    assert np.array_equal(np.asarray(fresh(x)), np.asarray(models["hard"](x)))
    for other in (dkm_tf.cluster_weights(_base(), 2 * K), _base(),
                  dkm_tf.cluster_weights(_base(), K, granularity="per_channel")):
        with pytest.raises(ValueError, match="could not be loaded"):
            other.load_weights(path)


def test_backend_refusal_tells_to_strip_a_model_saved_while_clustering(monkeypatch):
    # old: "m = dkm_tf.load_model(...), palettes = dkm_tf.palettes_of(m), then to_tflite(m,
    # ...)", which a model saved with its wrappers fails (now: "Expected a stripped model")
    import keras

    from dkm_tf.export.convert import require_tensorflow_backend

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match=r"(?s)'jax'.*KERAS_BACKEND=tensorflow.*"
                                           r"strip_clustering\(dkm_tf.load_model"):
        require_tensorflow_backend()
