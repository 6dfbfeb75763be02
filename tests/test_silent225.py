"""Kernel-scale storage losses that reached the user as a stray warning or not at all
(review R5 of the limits audit, 2026-12-07): compress(method="finetune") noted nothing of
underflowing float16 scales, scale_bits=8 raised a tiny kernel to one int8 step without a
word, and cluster_weights' warnings pointed inside Keras."""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402

L = keras.layers


def _tiny_kernel_model(norms=(1e-8,), classifier=False):
    """Conv2D(4, 3x3) on 6x6x4 whose kernels [:, :, i, 0] are rescaled to ``norms``; with
    ``classifier`` a softmax head compiled with a sparse cross-entropy."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    conv = L.Conv2D(4, 3, name="c")
    out = conv(inp)
    if classifier:
        out = L.Dense(3, activation="softmax", name="fc")(L.Flatten()(out))
    model = keras.Model(inp, out)
    k, b = conv.get_weights()
    for i, norm in enumerate(norms):
        k[:, :, i, 0] *= norm / np.linalg.norm(k[:, :, i, 0])
    conv.set_weights([k, b])
    if classifier:
        model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_compress_finetune_notes_underflowing_scales_without_a_warning():
    """F1: compress(method="finetune", unit="kernel") said nothing in its notes; a
    "cluster_weights:" UserWarning escaped (an error where warnings are errors)."""
    model = _tiny_kernel_model((1e-8,), classifier=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=UserWarning)  # none escapes compress
        res = dkm_tf.compress(model, (x, y), (x, y), method="finetune", n_clusters=8,
                              unit="kernel", codebook="shared", finetune_epochs=1, verbose=0)
    lines = [n for n in res.notes if "float16 scale" in n]
    assert lines == ["kernel scales of 'c' at the start of fine-tuning: 1 of 16 kernel(s): "
                     "float16 scale underflows to 0 (decoded as zero kernels); "
                     "scale_bits=32 keeps them"], res.notes
    res32 = dkm_tf.compress(model, (x, y), method="finetune", n_clusters=8, unit="kernel",
                            codebook="shared", scale_bits=32, finetune_epochs=1, verbose=0)
    assert not any("scale" in n for n in res32.notes), res32.notes
    # cluster_weights itself still warns (it returns no notes)
    with pytest.warns(UserWarning, match="cluster_weights: layer 'c'"):
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared")


@pytest.mark.parametrize("norm", [1e-8, 1e-6])
def test_int8_scales_note_a_kernel_raised_to_one_step(norm):
    """F2: scale_bits=8's |q| >= 1 decoded a norm-1e-8 kernel with norm ~0.0025 silently."""
    model = _tiny_kernel_model((norm,))
    res = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared", scale_bits=8)
    note = res.palettes[0].note
    step = float(note.split("int8 scales, step ")[1].split(";")[0])  # max |s| / 127
    decoded = np.linalg.norm(res.model.get_layer("c").kernel.numpy()[:, :, 0, 0])
    # one whole step times a centroid of unit kernels (norm <= 1), not ``norm``
    assert 0.3 * step < decoded <= step * (1 + 1e-5), (decoded, step)
    assert decoded > 1000 * norm
    assert f"1 of 16 kernel(s): scale raised to one int8 step {step:.3g}" in note, note
    times = float(note.split("decoded up to ")[1].split(" times")[0])
    np.testing.assert_allclose(times, decoded / norm, rtol=1e-2)  # measured, not step / norm
    assert "scale_bits=32 keeps them" in note
    r = dkm_tf.compress(model, method="wr", n_clusters=8, unit="kernel", codebook="shared",
                        scale_bits=8, verbose=0)
    assert [n for n in r.notes if "int8 step" in n and n.startswith("kernel scales of 'c'")]
    with pytest.warns(UserWarning, match=r"layer 'c': 1 of 16 kernel\(s\): scale raised"):
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared", scale_bits=8)


def test_int8_scales_of_ordinary_kernels_say_nothing():
    res = dkm_tf.share_weights(_tiny_kernel_model(()), 8, unit="kernel", codebook="shared",
                               scale_bits=8)
    assert "int8 step" not in res.palettes[0].note.split("int8 scales, step")[-1]
    assert "raised" not in res.palettes[0].note


def test_cluster_weights_scale_warning_points_at_the_callers_line():
    """F7: stacklevel=3 named a file inside Keras' clone_model."""
    model = _tiny_kernel_model((1e-8,))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared")
    ours = [w for w in seen if "float16 scale" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].filename == __file__, ours[0].filename


# F3 / F6: documentation that no longer matched the code


def _doc(name):
    import pathlib  # noqa: PLC0415

    return " ".join((pathlib.Path(__file__).parent.parent / name).read_text().split())


def test_docs_state_the_float16_underflow_threshold_and_the_override_forms():
    # float16 rounds 2^-25 (half its smallest subnormal) to 0 and just above it to 2^-24
    assert np.float16(2.0 ** -25) == 0 and np.float16(2.0 ** -25 * 1.001) > 0
    assert np.float16(4e-8) > 0  # so "below ~6e-8" overstated the zeroed norms
    readme, limits = _doc("README.md"), _doc("KNOWN_LIMITATIONS.md")
    assert "norm below ~3e-8 (2^-25) has a float16 scale of 0" in readme
    assert "below ~6e-8" not in readme
    # {layer: {}} keeps a depthwise kernel per channel since the override fix
    assert "or `{layer: {}}` (per tensor" not in limits
    assert '`{layer: {"granularity": "per_tensor"}}` (per tensor' in limits
    assert "a SeparableConv2D's depthwise kernel stays per channel unless" in readme


def test_a_class_override_leaves_a_separable_convs_depthwise_kernel_per_channel():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    y = L.SeparableConv2D(3, 3, name="sep")(L.DepthwiseConv2D(3, name="dw")(inp))
    model = keras.Model(inp, L.Dense(2, name="fc")(L.Flatten()(y)))
    per = {"granularity": "per_tensor"}
    for overrides, sep in (({"DepthwiseConv2D": per}, "per_channel"),
                           ({"DepthwiseConv2D": per, "SeparableConv2D": per}, "per_tensor"),
                           ({"DepthwiseConv2D": per, "sep": per}, "per_tensor")):
        res = dkm_tf.share_weights(model, 4, overrides=overrides)
        got = {p.name: p.layout.granularity for p in res.palettes}
        assert got["dw/kernel"] == "per_tensor" and got["sep/depthwise_kernel"] == sep


# F4: share_weights / strip_clustering copies are uncompiled: to_tflite's int8 check noted a
# compiled classifier of logits as read so "because it is not compiled"

LOGITS = "the model was read as a classifier of logits"
XS = np.random.default_rng(1).normal(size=(32, 6)).astype("float32")


def _logits_head(loss=None):
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    m = keras.Model(i, L.Dense(3, name="o")(L.Dense(16, activation="relu", name="h")(i)))
    if loss is not None:
        m.compile("adam", loss)
    return m


def _int8_logits(model, path):
    from dkm_tf.export import to_tflite  # noqa: PLC0415

    report = to_tflite(model, str(path), "int8", sample_inputs=XS[:16])
    return [n for n in report.notes if LOGITS in n], report.notes


def test_copies_of_a_compiled_classifier_keep_its_loss_for_the_int8_check(tmp_path):
    from dkm_tf.core.loss_kind import assumed_logits, non_class_loss  # noqa: PLC0415

    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = _logits_head(sce)
    shared = dkm_tf.share_weights(model, 8).model
    wrapped = dkm_tf.cluster_weights(model, 8)
    wrapped.compile("adam", sce)  # the README's fine-tuning workflow
    wrapped.fit(XS, np.arange(32) % 3, epochs=1, verbose=0)
    plain, _ = dkm_tf.strip_clustering(wrapped)
    for i, copy in enumerate((shared, plain)):
        assert not copy.compiled  # nothing compiled: training behaviour as before
        assert assumed_logits(copy) is None
        assert _int8_logits(copy, tmp_path / f"c{i}.tflite")[0] == []
    # the copy's copy too, and an uncompiled regressor is still noted
    assert assumed_logits(dkm_tf.share_weights(shared, 4).model) is None
    noted, _ = _int8_logits(dkm_tf.share_weights(_logits_head(), 8).model, tmp_path / "u.tflite")
    assert len(noted) == 1 and "because it is not compiled" in noted[0]
    # an "mse" regressor's copy is read by its loss: no arg-max check
    mse = dkm_tf.share_weights(_logits_head("mse"), 8).model
    assert non_class_loss(mse) == ("mse", "a regressor")
    noted, notes = _int8_logits(mse, tmp_path / "r.tflite")
    assert noted == [] and any("no top-1 check" in n for n in notes), notes


# F5: export/to_tflite.py's note on a file it loads with compile=False


@keras.saving.register_keras_serializable(package="silent225")
def _abs_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred))


def _script(tmp_path, model, x=XS[:16]):
    from dkm_tf.export.cli import run_to_tflite  # noqa: PLC0415

    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    return run_to_tflite(tmp_path / "m.keras", str(tmp_path / "m.tflite"), format="int8",
                         samples_path=str(tmp_path / "x.npy"))


def test_export_script_gives_a_custom_loss_as_the_reason(tmp_path):
    report = _script(tmp_path, _logits_head(_abs_loss))
    noted = [n for n in report.notes if LOGITS in n]
    assert len(noted) == 1, report.notes
    assert "its compiled loss 'silent225>_abs_loss' does not say" in noted[0], noted
    assert "not compiled" not in noted[0]


def test_export_script_says_once_why_an_mse_file_is_checked_by_its_arg_max(tmp_path):
    report = _script(tmp_path, _logits_head("mse"))
    noted = [n for n in report.notes if LOGITS in n or "mse" in n]
    assert len(noted) == 1, report.notes  # one note, not "compile it with its loss" beside
    assert "compiled with loss 'mse' (a regressor), which export/to_tflite.py does not " \
           "read" in noted[0] and "compile it with its loss" not in noted[0]


def test_export_script_refusal_of_an_mse_file_says_why_its_arg_max_was_checked(tmp_path):
    """A hidden layer whose int8 weights round to 0 (each column's scale is set by a weight
    of 100 on an input that is always 0): its int8 file outputs the bias 10 on every unit,
    the arg-max check refuses (agreement ~1/3), and the refusal said nothing of the loss
    (the note went only to a report that a refusal never returns)."""
    from dkm_tf.export.verify import ExportVerificationError  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    i = keras.Input((64,))
    hidden, dense = L.Dense(64, name="h"), L.Dense(3, name="o")
    model = keras.Model(i, dense(hidden(i)))
    rng = np.random.default_rng(0)
    k = rng.normal(size=(64, 64)).astype("float32") * 1e-2
    k[0, :] = 100.0  # step 100/127: every other weight rounds to 0
    hidden.set_weights([k, np.zeros(64, "float32")])
    dense.set_weights([rng.normal(size=(64, 3)).astype("float32"),
                       np.full(3, 10.0, "float32")])
    model.compile("adam", "mse")
    x = rng.normal(size=(64, 64)).astype("float32")
    x[:, 0] = 0.0
    with pytest.raises(ExportVerificationError, match=r"top-1 agreement[\s\S]*compiled with "
                       r"loss 'mse' \(a regressor\), which export/to_tflite.py does not read"):
        _script(tmp_path, model, x)


def test_logits_note_names_the_sign_only_for_one_unit():
    from dkm_tf import pipeline_metrics as pm  # noqa: PLC0415

    three = pm.logits_note(_logits_head(), [pm.AGREEMENT_USE])
    assert "compares its arg-max)" in three and "its sign" not in three
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    one = pm.logits_note(keras.Model(i, L.Dense(1)(i)), [pm.AGREEMENT_USE])
    assert "(one unit: its sign)" in one


@pytest.mark.parametrize("head", ["log_softmax", "lambda_softmax", "linear"])
def test_int8_check_reads_probability_rows_as_class_scores(tmp_path, head):
    """F5 (iii): a log_softmax output and a Lambda(softmax) output were noted as read as a
    classifier of logits "because it is not compiled"; their sample rows say they are class
    (log-)probabilities. A linear output is still noted."""
    from dkm_tf.core.loss_kind import probability_rows  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    z = L.Dense(3, name="o")(L.Dense(16, activation="relu", name="h")(i))
    out = {"log_softmax": L.Activation("log_softmax")(z),
           "lambda_softmax": L.Lambda(lambda t: keras.ops.softmax(t, axis=-1))(z),
           "linear": z}[head]
    model = keras.Model(i, out)
    rows = model.predict(XS, verbose=0)
    ref = (np.exp(rows).sum(-1) if head == "log_softmax" else rows.sum(-1))  # numpy check
    assert np.allclose(ref, 1.0, atol=1e-5) == (head != "linear")
    assert probability_rows([rows]) == (head != "linear")
    noted, notes = _int8_logits(model, tmp_path / "m.tflite")
    assert (len(noted) == 1) == (head == "linear"), notes


def test_probability_rows_needs_two_units_and_rows_summing_to_one():
    from dkm_tf.core.loss_kind import probability_rows  # noqa: PLC0415

    assert probability_rows(np.array([[0.2, 0.8], [0.5, 0.5]]))
    assert probability_rows(np.log(np.array([[0.2, 0.8], [0.5, 0.5]])))
    assert not probability_rows(np.ones((4, 1)))  # one unit: always "sums to 1"
    assert not probability_rows(np.array([[0.2, 0.7], [0.5, 0.5]]))
    assert not probability_rows(np.array([[1.2, -0.2]]))  # sums to 1, not probabilities
    assert not probability_rows([np.ones((2, 2)) / 2, np.ones((2, 2)) / 2])  # two outputs
    assert not probability_rows(None)
