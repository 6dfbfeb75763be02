"""`EnergyReport.layer(name)` is the whole layer call for every layer charged as several records.

Review R1 of the `TimeDistributed` report (tdreport, 2026-12-07) found, on efb2ed0:
`LayerTotal.stored_weight_bits` of a TimeDistributed model holding a TimeDistributed counted
the one 8x4 kernel twice (1024 bits, not 512); a step's generated name `td#2` was also a
real Dense's name, `layer("td#2")` the step (32 MACs, not the Dense's 120); a traced subclassed
model's TimeDistributed had untagged records `d`, `d#2`, `d#3` (`layer("td")` raised,
`layer("d")` was 32 of 96 MACs); `to_dict()["layer_totals"]` listed outer and inner calls with
nothing telling them apart; step tags refused `np.int64` and took `True`; and a layer charged
as several records that is not a TimeDistributed was one record of it (`Dense(silu)`'s matrix
product alone, an LSTM's and a nested model's name raised, a Lambda's first op). References:
MACs by hand, kernel bits from the Keras kernels' sizes, totals summed over records picked by
name, at batch None and 2.
"""

import dataclasses
import json

import keras
import numpy as np
import pytest

from dkm_tf import energy

L = keras.layers
TD = L.TimeDistributed
BATCHES = [None, 2]


def _names(report):
    return [x.name for x in report.layers]


def _summed(report, names, attr):
    return sum(getattr(report.record(n), attr) for n in names)


def _td_of_td_model(batch):
    keras.utils.set_random_seed(0)
    j = keras.Input((2, 8))
    inner = keras.Model(j, TD(L.Dense(4, name="d"), name="itd")(j))
    inp = keras.Input((3, 2, 8), batch_size=batch)
    model = keras.Model(inp, TD(inner, name="td")(inp))
    return model, energy.estimate(model)


@pytest.mark.parametrize("batch", BATCHES)
def test_td_model_of_td_stores_its_kernel_once(batch):
    model, report = _td_of_td_model(batch)
    kernel = model.get_layer("td").layer.get_layer("itd").layer.kernel
    bits = int(np.prod(kernel.shape)) * 16  # 8 x 4 weights at B_w = 16
    assert bits == 512
    outer, inner = report.layer("td"), report.layer("itd")
    assert outer.macs == 3 * 2 * 8 * 4 and inner.macs == 2 * 8 * 4
    assert outer.stored_weight_bits == bits  # was 1024: records[:6 // 3], two of one kernel
    assert inner.stored_weight_bits == bits
    assert outer.steps == 3 and len(outer.records) == 6
    assert outer.paper_total == pytest.approx(
        _summed(report, _names(report), "paper_total"), rel=1e-12)


@pytest.mark.parametrize("batch", BATCHES)
def test_layer_totals_mark_inner_calls(batch):
    _, report = _td_of_td_model(batch)
    rows = json.loads(json.dumps(report.to_dict()))["layer_totals"]
    within = {r["name"]: r["within"] for r in rows}
    assert within == {"td": [], "itd": ["td"], "itd#3": ["td"], "itd#5": ["td"]}
    outermost = [r for r in rows if not r["within"]]
    assert sum(r["macs"] for r in outermost) == report.macs == 192
    assert sum(r["macs"] for r in rows) == 2 * 192  # what summing every row gave


def _clash(batch):
    keras.utils.set_random_seed(0)
    i = keras.Input((3, 8), batch_size=batch)
    a = TD(L.Dense(4, name="d"), name="td")(i)
    b = L.Dense(5, name="td#2")(i)
    return energy.estimate(keras.Model(i, [a, b]))


@pytest.mark.parametrize("batch", BATCHES)
def test_step_names_skip_the_models_layer_names(batch):
    report = _clash(batch)
    names = _names(report)
    assert len(set(names)) == len(names)  # was td, td#2, td#3, td#2
    dense = report.layer("td#2")
    assert isinstance(dense, energy.LayerEnergy)
    assert dense.macs == 3 * 8 * 5 and dense.shape.op == "Dense"  # was 32, a step
    assert dense.shape.steps == ()
    td = report.layer("td")
    assert td.macs == 3 * 8 * 4
    assert [r.shape.steps[0][1:] for r in td.records] == [(1, 3), (2, 3), (3, 3)]
    assert "td#2" not in [r.name for r in td.records]
    assert report.macs == 3 * 8 * 4 + 3 * 8 * 5


@pytest.mark.parametrize("batch", BATCHES)
def test_shared_layer_call_names_skip_the_models_layer_names(batch):
    keras.utils.set_random_seed(0)
    i = keras.Input((8,), batch_size=batch)
    d = L.Dense(8, name="d")
    out = L.Dense(3, name="d#2")(d(d(i)))
    report = energy.estimate(keras.Model(i, out))
    names = _names(report)
    assert len(set(names)) == len(names)
    assert report.layer("d#2").macs == 8 * 3  # the Dense named d#2, not d's second call
    assert report.layer("d").macs == 8 * 8
    assert sorted(x.macs for x in report.layers) == [24, 64, 64]


def test_ambiguous_names_are_refused():
    step = energy.dense_shape("td", in_features=8, units=4)
    other = dataclasses.replace(energy.dense_shape("td#2", in_features=8, units=5))
    records = [dataclasses.replace(step, steps=(("td", 1, 2),), layer="d"),
               dataclasses.replace(step, name="td#2", steps=(("td", 2, 2),), layer="d"), other]
    report = energy.estimate(records)
    with pytest.raises(ValueError, match=r"'td#2' is ambiguous"):
        report.layer("td#2")
    with pytest.raises(ValueError, match=r"'td#2' is ambiguous"):
        report.record("td#2")
    assert report.layer("td").macs == 2 * 8 * 4


class SubTD(keras.Model):
    def __init__(self):
        super().__init__()
        self.td = TD(L.Dense(4, name="d"), name="td")

    def call(self, x):
        return self.td(x)


def test_traced_time_distributed_is_the_whole_layer():
    keras.utils.set_random_seed(0)
    report = energy.estimate(SubTD(), input_shape=(3, 8))
    td = report.layer("td")  # was KeyError
    assert isinstance(td, energy.LayerTotal)
    assert td.macs == 3 * 8 * 4 and td.steps == 3 and td.stored_weight_bits == 8 * 4 * 16
    assert _names(report) == ["td", "td#2", "td#3"]  # were d, d#2, d#3
    assert td.paper_total == pytest.approx(_summed(report, _names(report), "paper_total"))
    with pytest.raises(KeyError, match=r"'td'"):  # was the first step, 32 of 96, silently
        report.layer("d")


@pytest.mark.parametrize("steps", [(("td", np.int64(2), np.int64(3)),),
                                   (("td", np.int32(1), 3),)])
def test_numpy_integer_step_tags_are_taken(steps):
    shape = dataclasses.replace(energy.dense_shape("x", in_features=8, units=4), steps=steps)
    assert all(type(n) is int for n in shape.steps[0][1:])
    json.dumps(energy.estimate([shape]).to_dict())


@pytest.mark.parametrize("steps", [(("td", True, 3),), (("td", 1, True),)])
def test_bool_step_tags_are_refused(steps):
    with pytest.raises(ValueError, match="argument `steps`"):
        dataclasses.replace(energy.dense_shape("x", in_features=8, units=4), steps=steps)


def _one(layer, shape, batch, pre=None):
    keras.utils.set_random_seed(0)
    i = keras.Input(shape, batch_size=batch)
    return energy.estimate(keras.Model(i, layer(i if pre is None else pre(i))))


@pytest.mark.parametrize("batch", BATCHES)
def test_dense_with_its_own_activation_is_the_whole_layer(batch):
    report = _one(L.Dense(4, activation="silu", name="d"), (8,), batch)
    assert _names(report) == ["d", "d/silu"]
    d = report.layer("d")  # was the matrix product alone
    assert isinstance(d, energy.LayerTotal) and d.macs == 8 * 4
    for attr in ("paper_total", "hierarchy_total"):
        assert getattr(d, attr) == pytest.approx(_summed(report, ["d", "d/silu"], attr))
    assert d.paper_total > report.record("d").paper_total  # the silu is charged
    assert d.stored_weight_bits == 8 * 4 * 16
    assert report.record("d").shape.op == "Dense"
    text = report.summary()
    assert "d [1 of 2 records]" in text and "\nd  " not in text


@pytest.mark.parametrize("batch", BATCHES)
def test_plain_lstm_is_the_whole_layer(batch):
    report = _one(L.LSTM(4, name="r"), (3, 8), batch)
    r = report.layer("r")  # raised KeyError
    assert r.macs == 3 * (8 * 16 + 4 * 16)
    assert r.paper_total == pytest.approx(_summed(report, _names(report), "paper_total"))
    assert r.stored_weight_bits == (8 * 16 + 4 * 16) * 16


@pytest.mark.parametrize("batch", BATCHES)
def test_lambda_of_ops_is_the_whole_layer(batch):
    report = _one(L.Lambda(lambda t: keras.ops.clip(t, -1.0, 2.0) * 3.0, name="lam"), (8,),
                  batch, pre=L.Dense(8, name="d0"))
    ops = [n for n in _names(report) if n.split("/")[0] == "lam"]
    assert ops == ["lam", "lam/2", "lam/3"]
    lam = report.layer("lam")  # was the first op
    assert isinstance(lam, energy.LayerTotal)
    assert lam.paper_total == pytest.approx(_summed(report, ops, "paper_total"))
    assert lam.hierarchy_total > report.record("lam").hierarchy_total


@pytest.mark.parametrize("batch", BATCHES)
def test_nested_model_is_the_whole_call(batch):
    keras.utils.set_random_seed(0)
    j = keras.Input((8,))
    nm = keras.Model(j, L.Dense(4, name="d2")(L.Dense(6, activation="relu", name="d1")(j)),
                     name="nm")
    i = keras.Input((8,), batch_size=batch)
    report = energy.estimate(keras.Model(i, L.Dense(2, name="post")(nm(i))))
    call = report.layer("nm")  # raised KeyError
    assert call.macs == 8 * 6 + 6 * 4
    assert [r.name for r in call.records] == ["d1", "d2"]
    assert call.stored_weight_bits == (8 * 6 + 6 * 4) * 16
    assert report.layer("d1").macs == 8 * 6  # one record: the LayerEnergy, as before
    assert isinstance(report.layer("d1"), energy.LayerEnergy)
    rows = {r["name"]: r for r in report.to_dict()["layer_totals"]}
    assert rows["nm"]["macs"] == 72 and rows["nm"]["within"] == []


@pytest.mark.parametrize("batch", BATCHES)
def test_shared_layer_calls_are_summed_apart(batch):
    keras.utils.set_random_seed(0)
    i = keras.Input((8,), batch_size=batch)
    d = L.Dense(8, activation="silu", name="d")
    report = energy.estimate(keras.Model(i, d(d(i))))
    first, second = report.layer("d"), report.layer("d#2")
    assert [r.name for r in first.records] == ["d", "d/silu"]
    assert [r.name for r in second.records] == ["d#2", "d#2/silu"]
    assert first.macs == second.macs == 64
    assert first.paper_total + second.paper_total == pytest.approx(report.paper_total)


def _video(batch):
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 6, 6, 2), batch_size=batch)
    x = TD(L.Conv2D(4, 3, name="conv"), name="td_conv")(inp)
    x = TD(L.Flatten(), name="td_flat")(x)
    return keras.Model(inp, TD(L.Dense(5, name="fc"), name="td_fc")(x), name="video")


@pytest.mark.parametrize("batch", BATCHES)
def test_clustered_time_distributed_is_read_per_step(batch):
    import dkm_tf

    wrapped = dkm_tf.cluster_weights(_video(batch), 4)
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    conv, fc = 4 * 4 * 4 * 3 * 3 * 2, 4 * 4 * 4 * 5  # per step, by hand
    report = energy.estimate(wrapped, palettes=palettes)  # was 0 MACs, both listed
    assert not [n for n, why in report.skipped if "unsupported" in why]
    assert report.macs == 3 * (conv + fc)
    assert report.layer("cluster_td_conv").macs == 3 * conv
    assert report.layer("cluster_td_fc").macs == 3 * fc
    assert {x.n_clusters for x in report.layers} == {4}
    stripped = energy.estimate(plain, palettes=palettes)
    assert report.paper_total == pytest.approx(stripped.paper_total, rel=1e-12)
    assert report.hierarchy_total == pytest.approx(stripped.hierarchy_total, rel=1e-12)
    assert report.layer("cluster_td_fc").stored_weight_bits == pytest.approx(
        stripped.layer("td_fc").stored_weight_bits)


@pytest.mark.parametrize("batch", BATCHES)
def test_activation_of_several_ops_is_the_whole_layer(batch):
    report = _one(L.Activation("selu", name="act"), (8,), batch, pre=L.Dense(8, name="d"))
    ops = [n for n in _names(report) if n.startswith("act")]
    assert ops == ["act", "act/2", "act/3"]  # `act#1`, ... before h31 (`activations.op_name`)
    act = report.layer("act")  # raised KeyError
    assert [r.name for r in act.records] == ops
    assert act.paper_total == pytest.approx(_summed(report, ops, "paper_total"))
    assert act.hierarchy_total == pytest.approx(_summed(report, ops, "hierarchy_total"))
    assert report.layer("d").macs == 8 * 8
