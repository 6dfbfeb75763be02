"""A `TimeDistributed` of a recurrent layer, of a `TimeDistributed` and of a `Lambda` in a Keras
model's energy estimate, beside its float file's.

Found by probing `energy.estimate(keras_model)` against `energy.estimate(<its float file>)`:
the converter unrolls such a layer into one copy per step, where the Keras reader listed it
and charged nothing: a TimeDistributed LSTM(4) over 3 x 5 x 4 ("recurrent input shape (None,
3, 5, 4) is not (batch, steps, features)"; the file 1,920 MACs), a
`TimeDistributed(TimeDistributed(Dense(4)))` over 3 x 2 x 8 ("unsupported layer type
TimeDistributed"; the file 192 MACs, 6 FULLY_CONNECTED), a TimeDistributed Lambda of a clip
and a scaling over 3 steps of 8 ("unsupported layer type Lambda"; the file 9 element-wise
ops). A TimeDistributed ConvLSTM1D was charged one TD step as its time steps (768 MACs of the
file's 2,304).
"""

import warnings

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, same_totals

L = keras.layers
TD = L.TimeDistributed


def _model(build, shape, batch):
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, batch_size=batch)
    return keras.Model(inp, build(inp))


def _rnn(units, gates, steps, features, outer):
    """MACs of `outer` runs of a recurrent layer by hand: input and recurrent kernels."""
    return outer * steps * (features * gates * units + units * gates * units)


# (builder, input shape, MACs by hand). The listed LSTM(4) ran over 3 x 5 x 4; here 2 outer
# steps of 3 time steps of 4 features (the same formula, outer and time steps still distinct:
# the conversion, most of each case's time, grows with their product)
_RECURRENT = {
    "lstm": (lambda i: TD(L.LSTM(4, name="r"), name="td")(i), (2, 3, 4), _rnn(4, 4, 3, 4, 2)),
    "gru": (lambda i: TD(L.GRU(4, name="r"), name="td")(i), (2, 3, 4), _rnn(4, 3, 3, 4, 2)),
    "simple_rnn_sequences": (lambda i: TD(L.SimpleRNN(4, return_sequences=True, name="r"),
                                          name="td")(i), (2, 3, 4), _rnn(4, 1, 3, 4, 2)),
    "bidirectional": (lambda i: TD(L.Bidirectional(L.LSTM(4), name="r"), name="td")(i),
                      (2, 3, 4), 2 * _rnn(4, 4, 3, 4, 2)),
    "lstm_then_dense": (lambda i: L.Dense(3)(TD(L.LSTM(4, name="r"), name="td")(i)),
                        (2, 3, 4), _rnn(4, 4, 3, 4, 2) + 2 * 4 * 3),
    "td_of_td_lstm": (lambda i: TD(TD(L.LSTM(4, name="r")), name="td")(i), (2, 2, 3, 4),
                      _rnn(4, 4, 3, 4, 4)),
}


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("case", list(_RECURRENT))
def test_time_distributed_recurrent_layer_is_charged_as_the_file(case, batch, tmp_path):
    build, shape, macs = _RECURRENT[case]
    k, f = both(_model(build, shape, batch), tmp_path)
    assert k.macs == f.macs == macs  # 1,920 for the listed LSTM(4) over 3 x 5 x 4; 768 here
    same_totals(k, f)  # hierarchy and paper metric, rtol 1e-6
    assert not [n for n, why in k.skipped if "recurrent" in why or "unsupported" in why]
    assert {x.shape.layer for x in k.layers if x.name.startswith("td")} == {"r"}


def _inner():
    j = keras.Input((8,))
    return keras.Model(j, L.Dense(4, name="b")(L.Dense(6, activation="relu", name="a")(j)))


# (builder, input shape, MACs by hand, records)
_NESTED = {
    "dense": (lambda i: TD(TD(L.Dense(4, name="d")), name="td")(i), (3, 2, 8), 6 * 8 * 4, 6),
    "dense_relu_after": (lambda i: L.ReLU()(TD(TD(L.Dense(4, name="d")), name="td")(i)),
                         (3, 2, 8), 6 * 8 * 4, 7),
    "conv1d": (lambda i: TD(TD(L.Conv1D(4, 3, name="d")), name="td")(i), (3, 2, 8, 4),
               6 * 6 * 4 * 12, 6),
    "model": (lambda i: TD(TD(_inner()), name="td")(i), (3, 2, 8), 6 * (8 * 6 + 6 * 4), 12),
}


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("case", list(_NESTED))
def test_time_distributed_of_a_time_distributed_is_charged_every_step(case, batch, tmp_path):
    build, shape, macs, n = _NESTED[case]
    k, f = both(_model(build, shape, batch), tmp_path)
    assert k.macs == f.macs == macs  # 192 for the listed TD(TD(Dense(4))) over 3 x 2 x 8
    assert len(k.layers) == len(f.layers) == n
    same_totals(k, f)
    assert not [n for n, why in k.skipped if "unsupported" in why]


def _clip_scale(t):
    return keras.ops.clip(t, -1.0, 2.0) * 3.0


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("nested", [False, True])
def test_time_distributed_lambda_of_keras_ops_is_charged_every_step(nested, batch, tmp_path):
    """The listed Lambda: a clip (MINIMUM, MAXIMUM) and a scaling (MUL) per step."""
    shape = (3, 2, 8) if nested else (3, 8)
    lam = L.Lambda(_clip_scale, name="lam")
    k, f = both(_model(lambda i: TD(TD(lam) if nested else lam, name="td")(i), shape, batch),
                tmp_path)
    ops = [(x.shape.eltwise_op, x.shape.output_size) for x in k.layers]
    steps = 6 if nested else 3
    assert ops == [("max", 8), ("max", 8), ("mul", 8)] * steps == [
        (x.shape.eltwise_op, x.shape.output_size) for x in f.layers]
    same_totals(k, f)
    assert not [n for n, why in k.skipped if "unsupported" in why]


def test_time_distributed_lambda_not_of_keras_ops_is_still_listed(tmp_path):
    import tensorflow as tf

    k, _ = both(_model(lambda i: TD(L.Lambda(lambda t: tf.math.abs(t)), name="td")(i),
                       (3, 8), None), tmp_path)
    assert not k.layers
    assert [why.split(";")[0] for n, why in k.skipped if n == "td"] == [
        "unsupported layer type Lambda"]


@pytest.mark.parametrize("batch", [None, 2])
def test_time_distributed_conv_lstm_counts_every_step(batch, tmp_path):
    """Its MACs and paper metric are the file's (its hierarchy differs as a ConvLSTM1D's does
    outside one: the file's 8 gate convs per step, KNOWN_LIMITATIONS.md)."""
    k, f = both(_model(lambda i: TD(L.ConvLSTM1D(2, 3), name="td")(i), (2, 3, 6, 2), batch),
                tmp_path)
    per_step = 4 * 3 * 2 * 8 + 4 * 3 * 2 * 8  # input conv, 'same' recurrent conv: 4 positions
    assert k.macs == f.macs == 2 * 3 * per_step
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-6)


def _masked_nested(kind, batch):
    """Embedding(mask_zero=True) outside, a GlobalAveragePooling1D after other layers inside
    a nested model (inside two for "deeper")."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), dtype="int32", batch_size=batch)
    h = L.Embedding(50, 16, mask_zero=True)(inp)
    j = keras.Input((12, 16))
    x = {"dense": lambda t: L.Dense(8)(t),
         "dense_dropout_relu": lambda t: L.ReLU()(L.Dropout(0.1)(L.Dense(8)(t))),
         "conv": lambda t: L.Conv1D(8, 1)(t),  # no masking: Keras drops the mask there
         "add": lambda t: L.Add()([L.Dense(16)(t), t]),  # the AND of one mask
         "deeper": lambda t: L.Dense(8)(t)}[kind](j)
    inner = keras.Model(j, L.GlobalAveragePooling1D(name="gap")(x), name="inner")
    if kind == "deeper":
        k = keras.Input((12, 16))
        inner = keras.Model(k, inner(L.Dense(16)(k)), name="outer")
    with warnings.catch_warnings():  # the nested model's output has no mask; Conv1D's drop
        warnings.simplefilter("ignore", UserWarning)
        out = inner(h)
    return keras.Model(inp, L.Dense(3, name="head")(out))


@pytest.mark.filterwarnings("ignore:(?s).*will therefore destroy the mask:UserWarning")
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("kind", ["dense", "dense_dropout_relu", "conv", "deeper", "add"])
def test_masked_pooling_after_layers_in_a_nested_model_charges_the_mask_sum(kind, batch,
                                                                           tmp_path):
    """The listed case ("dense"): paper 11,201.0 vs the file's 11,237.6 before ("add":
    23,565.1 vs 23,601.7)."""
    k, f = both(_masked_nested(kind, batch), tmp_path)
    sums = [x.shape for x in k.layers if x.name.endswith("mask_sum")]
    if kind == "conv":
        assert not sums
    else:  # a SUM of the (batch, 12) mask: an average pooling of 1 channel over 12 steps
        assert [(s.kind, s.pool_op, s.input_size, s.output_size) for s in sums] == [
            ("pool", "avg", 12, 1)]
    same_totals(k, f)  # hierarchy and paper metric, rtol 1e-6
