"""Open Keras shapes (an `EinsumDense(output_shape=(None, n))`) are filled in for the walk.

Found by review of 509661a: once any layer read "unknown dimension", the whole model went to
the traced reader, which lacks the Functional walk's rules (pads merged into convs,
`Rescaling` folded, ReLUs fused), so the layers before the open EinsumDense read differently
from the file: `Rescaling(.5)` -> `Conv2D(4, 3)` -> Reshape -> open EinsumDense -> Dense,
Keras / file hierarchy 1.4169 (paper 1.0335). The trace also read an open dimension as 1
(TextVectorization -> Embedding -> open EinsumDense -> Dense: 231 MACs, by hand 315) and
turned away models whose records it named otherwise (-> MultiHeadAttention / Dot:
0 MACs, the file's 1920 / 665) without a note; the old walk read `ops.matmul(e, e^T)` as 7
MACs (the file's 175). Now the walk stays and reads the sizes of one eager call where Keras
recorded open shapes (`energy.open_shapes`).
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.energy import estimate
from dkm_tf.export import to_tflite

L = keras.layers


def _ein(x, n=7):
    return L.EinsumDense("abc,cd->abd", output_shape=(None, n), bias_axes="d")(x)


def _same_as_file(model, tmp_path, samples=None, fmt="float", **kw):
    """The Keras estimate of `model` equals its `fmt` file's: MACs, paper and hierarchy."""
    report = estimate(model, **({"palettes": kw["palettes"]} if "palettes" in kw else {}))
    if samples is None:
        rng = np.random.default_rng(0)
        samples = [rng.standard_normal((2,) + tuple(t.shape)[1:]).astype("float32")
                   for t in model.inputs]
        samples = samples[0] if len(samples) == 1 else samples
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, format=fmt, sample_inputs=samples, **kw)
    in_file = estimate(path)
    assert report.macs == in_file.macs
    np.testing.assert_allclose(report.paper_total, in_file.paper_total, rtol=1e-9)
    np.testing.assert_allclose(report.hierarchy_total, in_file.hierarchy_total, rtol=1e-9)
    reasons = [str(why) for _, why in report.skipped]
    assert not any(why.startswith("unknown dimension") for why in reasons)
    assert any("filled in from one trace" in why for why in reasons)
    return report


def test_rescaling_before_a_valid_conv_stays_folded(tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3))
    x = L.Reshape((36, 4))(L.Conv2D(4, 3)(L.Rescaling(0.5)(i)))
    model = keras.Model(i, L.Dense(3)(_ein(x)))
    report = _same_as_file(model, tmp_path)
    # by hand: conv 36 positions x 27 x 4; EinsumDense 36 x 4 x 7; Dense 36 x 7 x 3
    assert report.macs == 36 * 27 * 4 + 36 * 4 * 7 + 36 * 7 * 3


def test_pad_bn_relu_stem_keeps_the_walks_rules(tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input((16, 16, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3)(L.ZeroPadding2D(1)(L.Rescaling(.5)(i)))))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Reshape((64, 4))(_ein(L.Reshape((64, 16))(x), 4))
    model = keras.Model(i, L.Dense(10)(L.Flatten()(x)))
    report = _same_as_file(model, tmp_path)
    assert report.macs == 256 * 27 * 16 + 64 * 144 * 16 + 64 * 16 * 4 + 256 * 10


def test_nested_shared_and_two_input_models_are_filled(tmp_path):
    keras.utils.set_random_seed(0)
    ii = keras.Input((5, 6))
    inner = keras.Model(ii, _ein(ii), name="inner")
    i = keras.Input((5, 6))
    shared = L.Dense(7, name="shared")
    model = keras.Model(i, L.Dense(3)(shared(shared(inner(i)))))
    report = _same_as_file(model, tmp_path)
    assert report.macs == 5 * 6 * 7 + 2 * 5 * 7 * 7 + 5 * 7 * 3
    assert report.layer("shared#2").macs == 5 * 7 * 7
    a, b = keras.Input((5, 6)), keras.Input((5, 6))
    model = keras.Model([a, b], L.Dense(3)(_ein(L.Add()([a, b]))))
    assert _same_as_file(model, tmp_path).macs == 5 * 6 * 7 + 5 * 7 * 3  # the Add: no MACs


def test_an_open_nested_model_is_read_at_its_call(tmp_path):
    keras.utils.set_random_seed(0)
    ii = keras.Input((None, 7))
    inner = keras.Model(ii, L.Dense(4)(ii), name="inner")
    i = keras.Input((5, 6))
    model = keras.Model(i, L.Dense(3)(inner(_ein(i))))
    assert _same_as_file(model, tmp_path).macs == 5 * 6 * 7 + 5 * 7 * 4 + 5 * 4 * 3


@pytest.mark.parametrize("tail,macs", [
    # MultiHeadAttention(2, 4) on (5, 8): q, k, v 3 x 5 x 8 x 8; scores and context 2 x 2 x
    # 5 x 5 x 4; output 5 x 8 x 8
    (lambda e: L.MultiHeadAttention(2, 4)(e, e), 5 * 6 * 8 + 4 * 5 * 8 * 8 + 2 * 2 * 100),
    (lambda e: L.Dot(axes=(1, 1))([e, e]), 5 * 6 * 8 + 8 * 5 * 8),
    (lambda e: keras.ops.matmul(e, keras.ops.transpose(e, (0, 2, 1))), 5 * 6 * 8 + 5 * 8 * 5),
])
def test_products_after_an_open_einsum_are_charged(tail, macs, tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input((5, 6))
    model = keras.Model(i, tail(_ein(i, 8)))
    assert _same_as_file(model, tmp_path).macs == macs


def test_text_vectorization_length_is_not_read_as_one():
    keras.utils.set_random_seed(0)
    tv = L.TextVectorization(max_tokens=20, output_sequence_length=5)
    tv.adapt(["a b c d", "e f g"])
    a = keras.Input((1,), dtype="string")
    model = keras.Model(a, L.Dense(3)(_ein(L.Embedding(20, 6)(tv(a)))))
    report = estimate(model)
    assert report.macs == 5 * 6 * 7 + 5 * 7 * 3  # the trace read the length as 1: 231


class TextsModel(keras.Model):
    def __init__(self, vectorize):
        super().__init__()
        self.vectorize, self.embed = vectorize, L.Embedding(20, 6)
        self.ein = L.EinsumDense("abc,cd->abd", output_shape=(None, 7), bias_axes="d")
        self.head = L.Dense(3, name="head")

    def call(self, x):
        return self.head(self.ein(self.embed(self.vectorize(x))))


def test_a_traced_open_dimension_is_listed_not_read_as_one():
    keras.utils.set_random_seed(0)
    tv = L.TextVectorization(max_tokens=20, output_sequence_length=5)
    tv.adapt(["a b c d", "e f g"])
    report = estimate(TextsModel(tv), input_shape=(1,))
    assert report.macs == 5 * 6 * 7  # the head's length is open in the trace: was read as 1
    assert len(report.layers) == 1 and report.layers[0].shape.layer.startswith("einsum_dense")
    assert any("/head" in name and why.startswith("unknown dimension")
               for name, why in report.skipped)


def test_palettes_match_the_palettized_file(tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input((5, 6))
    x = L.Conv1D(8, 3, padding="same")(i)
    shared = dkm_tf.share_weights(keras.Model(i, L.Dense(3)(_ein(x))), n_clusters=4)
    report = _same_as_file(shared.model, tmp_path, fmt="palettized", palettes=shared.palettes)
    assert report.paper_total < report.baseline.paper_total
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((2, 5, 6)).astype("float32")
    path = str(tmp_path / "f.tflite")
    to_tflite(shared.model, path, format="float", sample_inputs=samples)
    np.testing.assert_allclose(report.baseline.paper_total, estimate(path).paper_total,
                               rtol=1e-9)


class _TraceFails(L.Layer):
    """An identity on open shapes (the model's own graph); fails once the sizes are known."""

    def call(self, x):
        if all(d is not None for d in tuple(x.shape)[1:]):
            raise RuntimeError("no call at known sizes")
        return x

    def compute_output_shape(self, shape):
        return shape


def test_a_failed_call_leaves_the_shapes_open_and_says_so():
    i = keras.Input((5, 6))
    e = _ein(_TraceFails()(i))
    model = keras.Model(i, L.Dense(3)(e))
    report = estimate(model)
    skipped = dict(report.skipped)
    assert report.macs == 0  # never read as 1
    assert skipped[e._keras_history.operation.name].startswith("unknown dimension")
    assert "failed (RuntimeError" in skipped["shapes"]
    assert "they are skipped" in skipped["shapes"]
    assert tuple(e.shape) == (None, None, 7)


class _Counter(L.Layer):
    """An identity counting its calls in a variable."""

    def build(self, shape):
        self.n = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.n.assign_add(1.0)
        return x


def test_the_estimate_runs_nothing_of_the_model():
    """Review R8: the eager call that filled the sizes ran the model's state updates (a
    stateful LSTM's states moved, so the next predict differed; a counter variable went
    0 -> 1 per estimate)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((5, 6), batch_size=1)
    counter = _Counter()
    lstm = L.LSTM(3, stateful=True)
    model = keras.Model(i, lstm(counter(_ein(i, 4))))
    x = np.ones((1, 5, 6), "float32")
    model.predict(x, verbose=0)
    states = [np.array(v) for v in lstm.states]
    n = float(counter.n.numpy())
    report = estimate(model)
    assert report.macs > 0 and "filled in" in dict(report.skipped)["shapes"]
    assert float(counter.n.numpy()) == n
    for before, after in zip(states, lstm.states):
        np.testing.assert_array_equal(before, np.array(after))


def test_a_nested_model_called_at_other_sizes_by_two_parents_stays_open():
    """Review R8: read at the first parent's size (336 MACs, the file 448), no word."""
    keras.utils.set_random_seed(0)
    ii = keras.Input((None, 7))
    inner = keras.Model(ii, L.Dense(4, name="d")(ii), name="inner")
    bi = keras.Input((10, 7))
    b = keras.Model(bi, inner(bi), name="b")
    a, c = keras.Input((6, 7)), keras.Input((10, 7))
    report = estimate(keras.Model([a, c], [inner(a), b(c)]))
    macs = {r.shape.name: r.macs for r in report.layers}
    assert macs.get("d", 0) == 0 and macs.get("d#2", 0) == 0  # never a size of another call
    assert any(why.startswith("unknown dimension") for _, why in report.skipped)


def test_a_data_dependent_size_stays_open():
    """Review R8: a boolean mask's row count was read at the zeros' value (8 rows, 504 MACs;
    real data keeps 4)."""
    import tensorflow as tf

    i = keras.Input((8, 6))
    kept = L.Lambda(lambda t: tf.boolean_mask(t, tf.reduce_sum(t, -1)[0] >= 0, axis=1),
                    output_shape=(None, 6))(i)
    e = _ein(kept)
    report = estimate(keras.Model(i, L.Dense(3)(e)))
    skipped = dict(report.skipped)
    assert skipped[e._keras_history.operation.name].startswith("unknown dimension")
    assert "still open" in skipped["shapes"] or "they are skipped" in skipped["shapes"]


def test_the_recorded_shapes_are_restored():
    i = keras.Input((5, 6))
    e = _ein(i)
    out = L.Dense(3)(e)
    estimate(keras.Model(i, out))
    assert tuple(e.shape) == (None, None, 7) and tuple(out.shape) == (None, None, 3)


@pytest.mark.parametrize("batch", [None, 2])
def test_a_nested_model_called_at_one_size_by_two_parents_is_filled(batch, tmp_path):
    """Review R9: called at the same size by two parents, it was put back open (0 MACs, the
    file 560): the second visit read its filled input shape as its own, fixed one."""
    keras.utils.set_random_seed(0)
    ii = keras.Input((None, 7))
    inner = keras.Model(ii, L.Dense(4, name="d")(ii), name="inner")
    bi = keras.Input((10, 7), batch_size=batch)
    b = keras.Model(bi, inner(bi), name="b")
    a, c = keras.Input((10, 7)), keras.Input((10, 7), batch_size=batch)
    _same_as_file(keras.Model([a, c], [inner(a), b(c)]), tmp_path)
