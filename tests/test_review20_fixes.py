"""Fixes from the twentieth session's reviews, each with its failing case."""

import numpy as np
import pytest

from dkm_tf.graph.sensitivity import weighted_kmeans


@pytest.mark.parametrize("shape", [(5, 1), (2, 1), (3,), (3, 2)])
def test_weighted_kmeans_refuses_importances_of_another_shape(shape):
    # 20f2b67's block loops read the first M importances: 5 for 3 values clustered with the
    # first 3 (and a floor from all 5) without a word
    x = np.array([[0.0], [1.0], [2.0]], np.float32)
    with pytest.raises(ValueError, match=r"argument `importance`.*\(3, 1\).*Received: shape"):
        weighted_kmeans(x, np.ones(shape), 2)


def test_weighted_kmeans_of_matching_shapes_is_unchanged():
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    cb, idx = weighted_kmeans(x, np.array([[1.0], [1.0], [1.0], [1.0]]), 2)
    assert np.allclose(np.sort(cb[:, 0]), [1.0, 10.0]) and idx.dtype == np.int32


def _dense(units=8, inputs=16, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, name="d")])


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_a_clustered_model_given_another_clusterings_palettes_is_stale_not_float(granularity):
    # before: 4 distinct values > K d = 2, so "weights this model holds as float" (what-if)
    import warnings

    from dkm_tf.energy import api, stored
    from dkm_tf.graph.share import share_weights

    model = _dense()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k4 = share_weights(model, 4, granularity=granularity)
        k2 = share_weights(model, 2, granularity=granularity)
    assert [v[3] for v in stored.palette_verdicts(k4.model, k2.palettes)] == ["stale"]
    assert "PALETTES NOT OF THIS MODEL'S WEIGHTS" in api._given_palettes_note(
        k4.model, k2.palettes)[0]
    # the float original with its copy's palettes stays the calm what-if, tiny layers too
    for m in (model, _dense(units=3, inputs=5, seed=1)):
        pal = share_weights(m, 2, granularity=granularity).palettes
        assert [v[3] for v in stored.palette_verdicts(m, pal)] == ["float"]


def test_a_rejected_float32_weight_is_counted_without_a_float64_copy():
    # before: np.unique of a float64 copy (the reviewer measured 8.7x the kernel in RSS)
    import tracemalloc

    from dkm_tf.energy import stored
    from dkm_tf.graph.share import share_weights

    model = _dense(units=512, inputs=512)
    pal = share_weights(model, 4).palettes
    kernel_bytes = 512 * 512 * 4
    tracemalloc.start()
    try:
        verdicts = stored.palette_verdicts(model, pal)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [v[3] for v in verdicts] == ["float"]
    # tracemalloc: the decoded palette (float32 + its int64 indices), the weight, its sorted
    # copy and unique's mask: 6.0x (a float64 copy and its sort on top: 8.2x)
    assert peak < 7.0 * kernel_bytes, peak / kernel_bytes


def test_save_palettes_names_a_bad_model_path():
    # before: TypeError "can't concat str to bytes" for bytes, a folder literally named "~"
    from dkm_tf.pipeline import save_palettes

    with pytest.raises(TypeError, match="argument `model_path`"):
        save_palettes([], b"m.keras")
    with pytest.raises(ValueError, match="argument `model_path`.*'~'"):
        save_palettes([], "~/no_such_folder_dkm_tf_20/m.keras")


def _float_original(kind):
    import keras

    keras.utils.set_random_seed(2)
    dtype = {"float16": "float16", "bfloat16": "bfloat16"}.get(kind, "float32")
    inp = keras.Input((128,))
    model = keras.Model(inp, keras.layers.Dense(128, dtype=dtype, name="d")(inp))
    if kind == "pruned":
        v = model.get_layer("d").kernel
        w = v.numpy()
        w[np.random.default_rng(0).random(w.shape) < 0.9] = 0.0
        v.assign(w)
    return model


@pytest.mark.parametrize("kind, granularity", [
    ("pruned", "per_tensor"), ("pruned", "per_channel"), ("float16", "per_channel"),
    ("bfloat16", "per_channel"), ("bfloat16", "per_tensor")])
def test_float_originals_stay_float_what_ifs(kind, granularity):
    # the first version of the stale rule (b374a4f) called these float weights "stale": 90 %
    # pruned (zeros repeat), float16 / bfloat16 (few values by their format) per channel
    import warnings

    from dkm_tf.energy import stored
    from dkm_tf.graph.share import share_weights

    model = _float_original(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pal = share_weights(model, 16, granularity=granularity,
                            preserve_sparsity=kind == "pruned").palettes
    assert [v[3] for v in stored.palette_verdicts(model, pal) if v[0].layer_name == "d"
            and v[0].weight_name == "kernel"] == ["float"]


def test_a_rejected_palette_leaves_other_float_layers_float(tmp_path):
    # 2ecf713: one palette naming a renamed layer made every layer the file does not describe
    # be read from its kernel: a pruned float conv the file leaves out (445 distinct values)
    # was charged as clustered (paper reduction 1.12 -> 1.59)
    import json
    import warnings

    import keras

    from dkm_tf.energy.api import estimate
    from dkm_tf.graph.share import share_weights

    layers = keras.layers
    keras.utils.set_random_seed(0)
    i = keras.Input((16, 16, 8))
    x = layers.Conv2D(32, 3, name="pruned")(layers.Conv2D(16, 3, name="conv1")(i))
    model = keras.Model(i, layers.Dense(4, name="head")(layers.GlobalAveragePooling2D()(x)))
    w = model.get_layer("pruned").kernel.numpy()
    w[np.random.default_rng(0).random(w.shape) < 0.9] = 0.0
    model.get_layer("pruned").kernel.assign(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = share_weights(model, 16, overrides={"pruned": None})
    path = tmp_path / "m.keras"
    result.model.save(path)
    lines = {}
    for rename in (False, True):
        dicts = [p.to_dict() for p in result.palettes]
        for d in dicts:
            if rename and d["layer_name"] == "head":
                d["layer_name"] = "head_old"
        (tmp_path / "m.palettes.json").write_text(json.dumps(dicts))
        report = estimate(str(path))
        lines[rename] = [ln for ln in report.summary().splitlines() if ln.startswith("pruned")]
        assert lines[rename] and lines[rename][0].split()[-2:] == ["1.00", "1.00"], lines
    assert "REJECTED PALETTES" in report.summary() and "head K=16" in report.summary()


def test_distillation_targets_names_the_out_of_range_labels():
    # before: "Received: labels=<array of shape (8,) and dtype int64>": no values, no count
    import keras

    import dkm_tf

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x, y = np.zeros((16, 4), "float32"), np.arange(16) % 4  # 4 of 16 labels are 3
    with pytest.raises(ValueError, match=r"argument `labels`.*\[0, 3\).*4 of 16 labels "
                                         r"outside, e\.g\. \[3, 3, 3, 3\]"):
        dkm_tf.distillation_targets(model, x, y)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_a_half_precision_clustered_model_given_other_palettes_is_stale(dtype, granularity):
    # ba2f916 called every float16 / bfloat16 weight "float" (the what-if) again: 0 of 12
    import warnings

    import keras

    from dkm_tf.energy import stored
    from dkm_tf.graph.share import share_weights

    def dense(dt=None):
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((128,)), keras.layers.Dense(128, name="d",
                                                                         dtype=dt)])

    model = dense()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k4, k2 = (share_weights(model, k, granularity=granularity) for k in (4, 2))
        k16 = share_weights(model, 16, granularity=granularity)
    clustered, original = dense(dtype), dense(dtype)
    clustered.get_layer("d").set_weights(
        [w.astype(dtype) for w in k4.model.get_layer("d").get_weights()])
    original.get_layer("d").set_weights(
        [w.astype(dtype) for w in model.get_layer("d").get_weights()])

    def kinds(m, pal):
        return [v[3] for v in stored.palette_verdicts(m, pal) if v[0].weight_name == "kernel"]
    assert kinds(clustered, k2.palettes) == ["stale"]
    assert kinds(original, k16.palettes) == ["float"]  # the what-if stays calm


def test_a_layer_renamed_onto_another_palettes_name_is_read_from_its_kernel(tmp_path):
    # ba2f916: with names shifted (c0 <- conv1's palette, conv1 <- conv2's, ...), the clustered
    # conv3 whose palette now names another layer was charged as float (1.00 for 1.75)
    import json
    import warnings

    import keras

    from dkm_tf.energy.api import estimate
    from dkm_tf.graph.share import share_weights

    keras.utils.set_random_seed(0)
    i = keras.Input((12, 12, 4))
    x = keras.layers.Conv2D(16, 3, name="conv1")(i)
    x = keras.layers.Conv2D(16, 3, name="conv2")(x)
    x = keras.layers.Conv2D(16, 3, name="conv3")(x)
    model = keras.Model(i, keras.layers.Dense(4, name="head")(x))  # its palette stays right
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = share_weights(model, 16, overrides={"conv3": {"n_clusters": 4}})
    path = tmp_path / "m.keras"
    result.model.save(path)
    dicts = [p.to_dict() for p in result.palettes]
    shift = {"conv1": "c0", "conv2": "conv1", "conv3": "conv2"}
    for d in dicts:
        d["layer_name"] = shift.get(d["layer_name"], d["layer_name"])
    (tmp_path / "m.palettes.json").write_text(json.dumps(dicts))
    summary = estimate(str(path)).summary()
    conv3 = [ln for ln in summary.splitlines() if ln.startswith("conv3")]
    assert conv3 and conv3[0].split()[-2] != "1.00", summary
    assert "conv3 K=4" in summary


def test_a_refusal_raised_alone_names_the_earlier_file_it_removed(tmp_path, monkeypatch):
    # d365120 removed the earlier run's file and then raised the refusal without a word of it
    import importlib

    import keras

    from dkm_tf.graph.share import share_weights

    ea = importlib.import_module("dkm_tf.export.export_all")  # the module, not the function

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    shared = share_weights(model, 4)
    earlier = tmp_path / "model.palettized.tflite"
    earlier.write_bytes(b"TFL3 earlier")

    def refuse(*a, **k):
        raise ea.ExportVerificationError("Refusing to write: relative error 0.9 (test)")
    monkeypatch.setattr(ea, "to_tflite", refuse)
    with pytest.raises(ea.ExportVerificationError, match=r"0\.9 \(test\).*earlier run left.*"
                                                         r"model\.palettized\.tflite.*removed"):
        ea.export_all(shared.model, shared.palettes, tmp_path,
                      np.zeros((2, 4), "float32"), targets=["palettized"])
    assert not earlier.exists()


def test_atomic_writes_put_the_temp_file_in_the_folder_the_os_resolves(tmp_path, monkeypatch):
    # "link/../out.json" with link -> another folder: the temp was made in abspath's folder
    # (tmp_path), the file lands in the link target's parent: EXDEV across filesystems
    import tempfile

    from dkm_tf.core import files

    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "link").symlink_to(tmp_path / "a" / "deep")
    made = []
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        made.append(kwargs.get("dir"))
        return real(*args, **kwargs)
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    files.write_text_atomic(str(tmp_path / "b" / "link" / ".." / "out.json"), "{}")
    assert (tmp_path / "a" / "out.json").read_text() == "{}"
    assert made == [str(tmp_path / "a")]
