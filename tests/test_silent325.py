"""Review R9 (2026-12-07): an uncompiled ``share_weights`` / ``strip_clustering`` copy carries
its source's loss; the Fisher weighting, the notes and the export checks read it as such."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.graph.sensitivity_loss import LossMismatchError  # noqa: E402

L = keras.layers


def _regressor(loss="mse"):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(3, name="o")(L.Dense(16, activation="relu", name="h")(inp)))
    model.compile("adam", loss)
    return model


def _x(n=32):
    return np.random.default_rng(1).normal(size=(n, 6)).astype("float32")


def test_fisher_refuses_copy_of_mse_regressor_as_its_source():
    """compress(copy, ..., weighting="fisher") of an "mse" regressor's copy weighed it by a
    cross-entropy over a softmax of its regression outputs (no note); its source is refused."""
    model, x = _regressor(), _x()
    copy = dkm_tf.share_weights(model, 16).model
    assert not copy.compiled
    kw = {"method": "wr", "n_clusters": 8, "weighting": "fisher", "verbose": 0}
    with pytest.raises(LossMismatchError) as source_error:
        dkm_tf.compress(model, (x, None), (x, None), **kw)
    with pytest.raises(LossMismatchError) as copy_error:
        dkm_tf.compress(copy, (x, None), (x, None), **kw)
    assert "weighting='fisher'" in str(copy_error.value)
    assert str(source_error.value).split("Received")[0] == \
        str(copy_error.value).split("Received")[0]


def test_cli_relative_error_refusal_of_mse_file_not_blamed_on_arg_max(tmp_path):
    """export/to_tflite.py on an "mse" file refused by the relative error alone (top-1
    agreement 1) had the arg-max explanation appended as if it were the refusal's cause."""
    from dkm_tf.export.cli import run_to_tflite
    from dkm_tf.export.verify import ExportVerificationError

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(3, name="o")(L.Dense(256, activation="relu")(inp)))
    model.compile("adam", "mse")
    model.save(tmp_path / "f.keras")
    np.save(tmp_path / "x.npy", _x(16))
    with pytest.raises(ExportVerificationError) as error:
        run_to_tflite(str(tmp_path / "f.keras"), str(tmp_path / "f.tflite"), format="int8",
                      samples_path=str(tmp_path / "x.npy"), tolerance=1e-7)
    message = str(error.value)
    assert "relative" in message and "top-1 agreement 1 " in message
    assert "read as a classifier of logits" not in message
    assert not (tmp_path / "f.tflite").exists()


def test_int8_raised_kernel_note_gives_its_decoded_norm():
    """At scale_bits=8 a kernel of norm 1e-8 was noted "decoded up to 6.83e+05 times its
    norm" (step / norm, as if its centroid had norm 1); it decodes to 2.34e5 times."""
    import re

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    conv = L.Conv2D(4, 3, name="c")
    model = keras.Model(inp, conv(inp))
    kernel, bias = conv.get_weights()
    kernel[:, :, 0, 0] *= 1e-8 / np.linalg.norm(kernel[:, :, 0, 0])
    conv.set_weights([kernel, bias])
    res = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared", scale_bits=8)
    decoded = res.model.get_layer("c").get_weights()[0]
    norms = lambda k: np.sqrt(np.sum(np.asarray(k, np.float64) ** 2, axis=(0, 1)))  # noqa: E731
    ratio = norms(decoded) / norms(kernel)
    assert ratio[0, 0] > 1e4  # raised: the one small kernel
    found = re.search(r"decoded up to ([0-9.e+]+) times its norm", res.palettes[0].note)
    assert found, res.palettes[0].note
    np.testing.assert_allclose(float(found.group(1)), ratio[0, 0], rtol=5e-3)


def test_finetune_kernel_constraint_warning_is_a_compress_note():
    """compress(method="finetune", unit="kernel") of a conv with a kernel constraint let
    cluster_weights' UserWarning escape (an error where warnings are errors)."""
    import warnings

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    y = L.Conv2D(4, 3, name="c", kernel_constraint=keras.constraints.MaxNorm(2.0))(inp)
    model = keras.Model(inp, L.Dense(3, name="fc")(L.Flatten()(y)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y_true = rng.integers(0, 3, size=16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*kernel constraint", category=UserWarning)
        res = dkm_tf.compress(model, (x, y_true), (x, y_true), method="finetune",
                              n_clusters=4, unit="kernel", codebook="shared",
                              finetune_epochs=1, verbose=0)
    assert [n for n in res.notes if "kernel constraint of 'c' (MaxNorm)" in n], res.notes


def test_uncompiled_copy_is_not_said_compiled_with_its_source_loss(tmp_path):
    """Notes and refusals said "compiled with loss 'mse'" of a copy that is not compiled (the
    loss is its source's, carried by share_weights)."""
    from dkm_tf.pipeline_metrics import not_class_scores

    model, x = _regressor(), _x(8)
    copy = dkm_tf.share_weights(model, 16).model
    carried = "the loss 'mse' of the model it was copied from"
    assert "is compiled with loss 'mse'" in not_class_scores(model)
    why = not_class_scores(copy)
    assert carried in why and "compiled with" not in why
    with pytest.raises(ValueError, match="compiled with loss 'mse'"):
        dkm_tf.distillation_targets(model, x, np.zeros(8, "int64"))
    with pytest.raises(ValueError) as refusal:
        dkm_tf.distillation_targets(copy, x, np.zeros(8, "int64"))
    assert carried in str(refusal.value) and "compiled with loss" not in str(refusal.value)
    assert "compiling the copy with a cross-entropy overrides it" in str(refusal.value)
    from dkm_tf.export import to_tflite

    report = to_tflite(copy, str(tmp_path / "c.tflite"), "int8", sample_inputs=x)
    said = [n for n in report.notes if n.startswith("int8: no top-1 check")]
    assert said and carried in said[0] and "compiled with" not in said[0], report.notes


@pytest.mark.parametrize("top1", [0.5, 1.0])
def test_export_noting_explains_only_a_top1_refusal(top1):
    """The arg-max explanation still reaches a refusal by the top-1 check (and only it)."""
    from dkm_tf.export.cli import _export_noting
    from dkm_tf.export.verify import Comparison, ExportVerificationError, refuse_if_bad

    failed = Comparison("litert", 0.01, 0.02 if top1 < 1 else 0.5, 0.1, 4,
                        top1_agreement=top1, min_top1=0.7)
    assert not failed.ok

    def export():
        refuse_if_bad("f.tflite", "int8", [failed])

    unread = "int8: top-1 check of its arg-max: the file was compiled with loss 'mse'"
    with pytest.raises(ExportVerificationError) as error:
        _export_noting(export, unread)
    assert ("the file was compiled with loss 'mse'" in str(error.value)) is (top1 < 1)
