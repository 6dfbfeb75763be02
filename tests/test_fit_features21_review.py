"""What the review of the fit-features work found: the new refusal of ``(x, y,
sample_weight)`` for ``weighting="fisher"`` also refused a subclassed 3-input model's own
three input arrays (a subclassed model has no ``model.inputs`` to count), and the LoRA-merged
copy that ``compress`` trains was compiled without the model's ``loss_weights`` and
``weighted_metrics``."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class ThreeInputs(keras.Model):
    def __init__(self):
        super().__init__()
        self.join = keras.layers.Concatenate()
        self.fc = keras.layers.Dense(3)

    def call(self, xs):
        return self.fc(self.join(list(xs)))


def test_fisher_takes_a_subclassed_models_three_inputs_and_sample_weights():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(12, 4)).astype("float32") for _ in range(3)]
    y = (xs[0][:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    model = ThreeInputs()
    model(xs)
    model.compile("adam", _sce())
    got = dkm_tf.fisher_importance(model, list(xs))
    ref = dkm_tf.fisher_importance(model, tuple(xs))  # the tuple of the three, as before
    assert got.keys() == ref.keys() and len(got) == 1
    for name in got:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(ref[name]))
        assert np.isfinite(np.asarray(got[name])).all() and np.asarray(got[name]).sum() > 0
    weighted = dkm_tf.fisher_importance(model, (list(xs), y, np.ones(12, "float32")),
                                        labels="data")  # (x, y, sample_weight): weights 1
    plain = dkm_tf.fisher_importance(model, (list(xs), y), labels="data")
    for name in weighted:
        np.testing.assert_array_equal(np.asarray(weighted[name]), np.asarray(plain[name]))


def test_lora_merged_copy_keeps_loss_weights_and_weighted_metrics():
    from dkm_tf.pipeline_args import merged_lora  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h")(inp)
    model = keras.Model(inp, [keras.layers.Dense(3, name="a")(h),
                              keras.layers.Dense(3, name="b")(h)])
    model.get_layer("h").enable_lora(2)
    model.compile("adam", loss=[_sce(), _sce()], loss_weights=[1.0, 0.0],
                  weighted_metrics=[["accuracy"], []])
    notes = []
    work = merged_lora(model, notes)
    assert work is not model and notes
    config = work.get_compile_config()
    assert config["loss_weights"] == [1.0, 0.0]
    assert config["weighted_metrics"]
