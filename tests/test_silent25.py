"""Documented behaviours a user met as silent wrong results (limits audit, 2026-12-07, §A):
an overrides entry that only sets n_clusters switched a depthwise kernel to per tensor."""

import io
import json
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402

L = keras.layers


def _dw_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    y = L.DepthwiseConv2D(3, name="dw")(inp)
    y = L.SeparableConv2D(3, 3, name="sep")(y)
    return keras.Model(inp, L.Dense(2, name="fc")(L.Flatten()(y)))


def _granularities(res):
    return {p.name: p.layout.granularity for p in res.palettes}


@pytest.mark.parametrize("overrides", [{"dw": {"n_clusters": 4}, "sep": {"n_clusters": 4}},
                                       {"DepthwiseConv2D": {"n_clusters": 4}, "sep": {}},
                                       {"dw": {"init": "linear"}}])
def test_override_without_granularity_keeps_depthwise_per_channel(overrides):
    """share_weights(m, 4, overrides={"dw": {"n_clusters": 4}}) gave dw/kernel per_tensor
    (no note) where share_weights(m, 4) gives per_channel."""
    model = _dw_model()
    plain = _granularities(dkm_tf.share_weights(model, 4))
    res = dkm_tf.share_weights(model, 4, overrides=overrides)
    assert _granularities(res) == plain
    assert plain["dw/kernel"] == plain["sep/depthwise_kernel"] == "per_channel"
    assert plain["fc/kernel"] == plain["sep/pointwise_kernel"] == "per_tensor"
    by_name = {p.name: p for p in res.palettes}
    assert "per-channel codebooks" in by_name["dw/kernel"].note
    # per channel: each of the 4 channels' 9 weights has its own codebook of <= 4 values
    kernel = res.model.get_layer("dw").kernel.numpy()  # (3, 3, 4, 1)
    for c in range(4):
        assert len(np.unique(kernel[:, :, c, 0])) <= 4
    assert len(np.unique(kernel)) > 4


def test_explicit_granularity_in_an_override_wins():
    model = _dw_model()
    res = dkm_tf.share_weights(model, 4, overrides={
        "DepthwiseConv2D": {"granularity": "per_tensor"},
        "sep": {"n_clusters": 3, "granularity": "per_tensor"}})
    g = _granularities(res)
    assert g["dw/kernel"] == g["sep/depthwise_kernel"] == "per_tensor"
    assert len(np.unique(res.model.get_layer("dw").kernel.numpy())) <= 4
    # the class's granularity stays under a name's entry that does not set one
    res = dkm_tf.share_weights(model, 4, overrides={
        "DepthwiseConv2D": {"granularity": "per_tensor"}, "dw": {"n_clusters": 3}})
    assert _granularities(res)["dw/kernel"] == "per_tensor"
    # a global per_channel: every kernel per channel, named or not
    res = dkm_tf.share_weights(model, 4, granularity="per_channel",
                               overrides={"dw": {"n_clusters": 3}})
    assert set(_granularities(res).values()) == {"per_channel"}


def test_cluster_weights_override_without_granularity_keeps_depthwise_per_channel():
    model = _dw_model()
    for overrides in (None, {"dw": {"n_clusters": 4}}):
        _, report = dkm_tf.cluster_weights(model, 4, overrides=overrides, return_report=True)
        settings = {name: s for name, _, s in report.clustered}
        assert settings["dw"]["granularity"] == "per_channel", overrides
    _, report = dkm_tf.cluster_weights(
        model, 4, overrides={"dw": {"granularity": "per_tensor"}}, return_report=True)
    assert {n: s for n, _, s in report.clustered}["dw"]["granularity"] == "per_tensor"


def test_cli_overrides_entry_without_granularity_keeps_depthwise_per_channel(tmp_path):
    from dkm_tf import cli  # noqa: PLC0415
    path = tmp_path / "m.keras"
    _dw_model().save(path)
    out_dir, out, err = tmp_path / "out", io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(path), "--n_clusters", "4", "--notflite",
                  "--noplots", "--quiet", "--output_dir", str(out_dir), "--overrides",
                  json.dumps({"dw": {"n_clusters": 4}})], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    rows = {r["name"]: r for r in json.loads((out_dir / "report.json").read_text())
            ["size"]["rows"]}
    assert rows["dw/kernel"]["granularity"] == "per_channel"
    assert rows["sep/depthwise_kernel"]["granularity"] == "per_channel"


# (b) scaled kernel clustering stored a tiny kernel's float16 scale as 0 without a word


def _tiny_kernel_model(norms=(1e-8,)):
    """Conv2D(4, 3x3) on 6x6x4 whose kernels [:, :, i, 0] are rescaled to ``norms``."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    conv = L.Conv2D(4, 3, name="c")
    model = keras.Model(inp, conv(inp))
    k, b = conv.get_weights()
    for i, norm in enumerate(norms):
        k[:, :, i, 0] *= norm / np.linalg.norm(k[:, :, i, 0])
    conv.set_weights([k, b])
    return model


def test_share_weights_notes_kernels_whose_float16_scale_underflows():
    model = _tiny_kernel_model((1e-8, 1e-6))
    res = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared")
    kernel = res.model.get_layer("c").kernel.numpy()
    assert np.all(kernel[:, :, 0, 0] == 0)  # float16's smallest subnormal is 6e-8
    note = res.palettes[0].note
    assert "1 of 16 kernel(s): float16 scale underflows to 0" in note, note
    # 1e-6 is a float16 subnormal: steps of 2^-24 = 6e-8, so up to 3 % off
    assert "1 of 16 kernel(s): float16 scale below 3e-06" in note, note
    assert "scale_bits=32 keeps them" in note
    # 32-bit scales keep both (within k-means' fit of the shape), and say nothing
    res32 = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared", scale_bits=32)
    kept = res32.model.get_layer("c").kernel.numpy()
    assert 0.5e-8 < np.linalg.norm(kept[:, :, 0, 0]) <= 1.0e-8 * 1.001
    assert "float16 scale" not in res32.palettes[0].note
    # an ordinary layer gets no such note
    plain = dkm_tf.share_weights(_tiny_kernel_model(()), 8, unit="kernel", codebook="shared")
    assert "float16 scale" not in plain.palettes[0].note


def test_cluster_weights_warns_of_kernels_whose_float16_scale_underflows():
    model = _tiny_kernel_model((1e-8,))
    with pytest.warns(UserWarning, match=r"layer 'c': 1 of 16 kernel\(s\): float16 scale "
                                         r"underflows to 0.*scale_bits=32 keeps them"):
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 32 bits: no warning
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared", scale_bits=32)


def test_compress_notes_name_the_layer_whose_float16_scales_underflow():
    model = _tiny_kernel_model((1e-8,))
    res = dkm_tf.compress(model, method="wr", n_clusters=8, unit="kernel", codebook="shared",
                          verbose=0)
    lines = [n for n in res.notes if "float16 scale" in n]
    assert len(lines) == 1 and lines[0].startswith("kernel scales of 'c': 1 of 16 kernel(s)")
    assert "scale_bits=32 keeps them" in lines[0]
    assert "note: kernel scales of 'c'" in res.summary()
    res32 = dkm_tf.compress(model, method="wr", n_clusters=8, unit="kernel",
                            codebook="shared", scale_bits=32, verbose=0)
    assert not any("float16 scale" in n for n in res32.notes)


# (c) a model with no compiled loss and no softmax / sigmoid output was read as a classifier
# of logits (its arg-max "agreement", Fisher's softmax, the int8 arg-max check) with no word

LOGITS = "the model was read as a classifier of logits"
X = np.random.default_rng(0).normal(size=(48, 6)).astype("float32")


def _head(activation=None, loss=None, units=3):
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = L.Dense(16, activation="relu", name="h")(i)
    m = keras.Model(i, L.Dense(units, activation=activation, name="o")(h))
    if loss is not None:
        m.compile("adam", loss)
    return m


def _logits_notes(notes):
    return [n for n in notes if n.startswith(LOGITS)]


def _my_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred))


def test_compress_notes_an_uncompiled_model_read_as_a_classifier_of_logits():
    r = dkm_tf.compress(_head(), (X, None), (X[:16], None), n_clusters=2, verbose=0)
    assert r.metric == "agreement with the float model"  # behaviour unchanged
    (note,) = _logits_notes(r.notes)
    assert "compares its arg-max" in note and "because it is not compiled" in note
    assert 'compile it with its loss (e.g. "mse")' in note
    assert f"note: {LOGITS}" in r.summary()
    # a custom loss does not say either
    r = dkm_tf.compress(_head(loss=_my_loss), (X, None), (X[:16], None), n_clusters=2,
                        verbose=0)
    (note,) = _logits_notes(r.notes)
    assert "its compiled loss '_my_loss' does not say" in note


@pytest.mark.parametrize("activation, loss", [
    ("softmax", None), ("sigmoid", None), (None, "sparse_categorical_crossentropy"),
    (None, keras.losses.CategoricalCrossentropy(from_logits=True)), (None, "mse")])
def test_compress_says_nothing_where_the_output_or_loss_says_what_the_model_is(activation,
                                                                                loss):
    r = dkm_tf.compress(_head(activation, loss), (X, None), (X[:16], None), n_clusters=2,
                        verbose=0)
    assert not _logits_notes(r.notes), r.notes
    assert (r.accuracy_before is None) == (loss == "mse")


def test_compress_notes_fisher_weighting_of_an_uncompiled_model_and_not_labelled_data():
    r = dkm_tf.compress(_head(), (X, None), None, n_clusters=2, weighting="fisher",
                        calibration_samples=16, verbose=0)
    (note,) = _logits_notes(r.notes)
    assert "weighting='fisher' weighs by a cross-entropy over a softmax" in note
    assert "arg-max" not in note.split(" because ")[0]
    # labelled test data (class ids: the user says it is a classifier), no weighting: no note
    y = np.arange(16) % 3
    r = dkm_tf.compress(_head(), (X, None), (X[:16], y), n_clusters=2, verbose=0)
    assert not _logits_notes(r.notes)


def test_int8_export_notes_an_uncompiled_model_read_as_a_classifier_of_logits(tmp_path):
    from dkm_tf.export import to_tflite  # noqa: PLC0415

    report = to_tflite(_head(), str(tmp_path / "a.tflite"), "int8", sample_inputs=X[:16])
    notes = [n for n in report.notes if LOGITS in n]
    assert len(notes) == 1 and "top-1 check of its arg-max" in notes[0], report.notes
    report = to_tflite(_head("softmax"), str(tmp_path / "b.tflite"), "int8",
                       sample_inputs=X[:16])
    assert not [n for n in report.notes if LOGITS in n]


def _cli(tmp_path, model, *flags):
    from dkm_tf import cli  # noqa: PLC0415

    tmp_path.mkdir(exist_ok=True)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=X[:32], x_test=X[32:])
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "m.keras"), "--dataset",
                  str(tmp_path / "d.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "4", "--noplots", "--quiet", *flags], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    return json.loads((tmp_path / "o" / "report.json").read_text())


def _int8_logits_notes(report):
    return [n for n in report["tflite"]["int8"]["notes"] if LOGITS in n]


def test_cli_notes_an_uncompiled_model_file_read_as_a_classifier_of_logits(tmp_path):
    report = _cli(tmp_path / "a", _head(), "--notflite")
    (note,) = _logits_notes(report["notes"])
    assert "compares its arg-max" in note and "int8" not in note
    report = _cli(tmp_path / "b", _head())  # with the .tflite files: the int8 check too
    (note,) = _logits_notes(report["notes"])
    assert "int8 .tflite files are checked to keep its arg-max" in note
    assert len(_int8_logits_notes(report)) == 1


def test_cli_says_nothing_for_a_file_compiled_with_a_cross_entropy(tmp_path):
    """The file is loaded with compile=False: its loss, read from the file, says it is a
    classifier, for the agreement and for the int8 check of the compressed model."""
    report = _cli(tmp_path, _head(loss="sparse_categorical_crossentropy"))
    assert not _logits_notes(report["notes"]), report["notes"]
    assert not _int8_logits_notes(report)


@pytest.mark.parametrize("loss, noted", [(None, True), ("mse", True),
                                         (keras.losses.CategoricalCrossentropy(
                                             from_logits=True), False)])
def test_export_script_int8_reads_the_files_loss_for_the_logits_note(tmp_path, loss, noted):
    """export/to_tflite.py loads with compile=False: a file compiled with a cross-entropy is
    a classifier (no note); an uncompiled one is read as one of logits by assumption."""
    from dkm_tf.export.cli import run_to_tflite  # noqa: PLC0415

    _head(loss=loss).save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", X[:16])
    report = run_to_tflite(tmp_path / "m.keras", str(tmp_path / "m.tflite"), format="int8",
                           samples_path=str(tmp_path / "x.npy"))
    assert any(LOGITS in n for n in report.notes) == noted, report.notes
    assert any("which export/to_tflite.py does not read" in n
               for n in report.notes) == (loss == "mse")
