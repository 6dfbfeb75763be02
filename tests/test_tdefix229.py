"""Review R13 of the TimeDistributed energy work: which call of a layer a graph is read for,
and a mask passed through a nested model's graph to a masked GlobalAveragePooling1D.

`keras_wrapped._node` finds the node of the call being read; one that always took the first
node (`layer._inbound_nodes[0]`) passed every test before: one TimeDistributed Lambda called
on an int32 then a float32 tensor tells them apart (such a `_node`: 0.0 or 621.5 of the
file's 310.7, by the call order). A nested Functional model called on a masked tensor passes
the mask to its graph at run time: Embedding(mask_zero=True) outside, [a model of a Dense] then
a GlobalAveragePooling1D inside a nested model: the Keras estimate left the mask's SUM out
(paper 2,996.3 vs the file's 3,014.5).
"""

import keras
import pytest

from tests._energy_file25 import both, same_totals

L = keras.layers


@pytest.mark.parametrize("int_first", [True, False])
def test_one_time_distributed_lambda_called_on_int_and_float_reads_each_call(int_first,
                                                                             tmp_path):
    """The float call's MUL and ADD per step, 3 steps of 8 (the int call's: index math)."""
    keras.utils.set_random_seed(0)
    td = L.TimeDistributed(L.Lambda(lambda t: t * 3 + 1), name="td")
    a = keras.Input((3, 8), dtype="int32", batch_size=2)
    b = keras.Input((3, 8), batch_size=2)
    if int_first:
        ya, yb = td(a), td(b)
    else:
        yb, ya = td(b), td(a)
    model = keras.Model([a, b], L.Concatenate()([keras.ops.cast(ya, "float32"), yb]))
    k, f = both(model, tmp_path)
    eltwise = [(x.shape.eltwise_op, x.shape.output_size) for x in k.layers
               if x.shape.kind == "eltwise"]
    assert eltwise == [("mul", 8), ("add", 8)] * 3 == [
        (x.shape.eltwise_op, x.shape.output_size) for x in f.layers
        if x.shape.kind == "eltwise"]
    same_totals(k, f)  # paper 310.7 each


def _nested_twice(batch, conv):
    """Embedding(20, 8, mask_zero=True) outside; inside a nested model, a nested model of a
    Dense (or of a Conv1D, which drops the mask) then a GlobalAveragePooling1D."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), batch_size=batch, dtype="int32")
    e = L.Embedding(20, 8, mask_zero=True)(x)
    j = keras.Input((6, 8))
    mid = keras.Model(j, (L.Conv1D(8, 1) if conv else L.Dense(8))(j), name="mid")
    i = keras.Input((6, 8))
    inner = keras.Model(i, L.GlobalAveragePooling1D(name="gap")(mid(i)), name="inner")
    return keras.Model(x, L.Dense(3, name="head")(inner(e)))


@pytest.mark.filterwarnings("ignore:(?s).*will therefore destroy the mask:UserWarning")
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("conv", [False, True])
def test_masked_pooling_after_a_nested_model_in_a_nested_model(conv, batch, tmp_path):
    """The Dense passes the mask: the (batch, 6) mask's SUM, an average pooling of 1 channel
    over 6 steps, as in the file (paper 3,014.5; 2,996.3 before); the Conv1D drops it: none,
    in neither."""
    k, f = both(_nested_twice(batch, conv), tmp_path)
    sums = [x.shape for x in k.layers if x.name.endswith("mask_sum")]
    assert [(s.kind, s.pool_op, s.input_size, s.output_size) for s in sums] == (
        [] if conv else [("pool", "avg", 6, 1)])
    same_totals(k, f)


@pytest.mark.parametrize("td", [True, False])
def test_lambda_argument_set_in_place_after_an_estimate_is_read_anew(td, tmp_path):
    """`arguments={"s": 2.0}` then `lam.arguments["s"] = 1.0`: the new graph's ADD only, as
    the file (the old graph's MUL and ADD were read again: paper 310.7 vs 145.3)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    lam = L.Lambda(lambda t, s: t * s + 1.0, arguments={"s": 2.0}, name="lam")
    model = keras.Model(inp, L.TimeDistributed(lam, name="td")(inp) if td else lam(inp))
    steps = 3 if td else 1
    assert [x.shape.eltwise_op for x in both(model, tmp_path)[0].layers] == [
        "mul", "add"] * steps
    lam.arguments["s"] = 1.0
    k, f = both(model, tmp_path)
    assert [x.shape.eltwise_op for x in k.layers] == ["add"] * steps == [
        x.shape.eltwise_op for x in f.layers]
    same_totals(k, f)
