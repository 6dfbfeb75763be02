"""Names of the records of a subclassed model traced inside a Functional one (h31, round 2).

Before this round (main at 8a8d68f, 2026-12-07) `keras_more.nested_subclassed` renamed each
traced record on its own (`fresh(used, r.name)`): only the record named exactly `d` moved, so
for a subclassed `sub` holding Dense(8, selu) `d` before a top-level Dense(4) `d` the records
were `d#2`, `d/selu`, `d/selu/2`, `d/selu/3`, `d` and `report.layer("d")` summed the inner
selu ops into the outer Dense (paper 382.25 for its own 223.53); an Activation `act` inside
`sub` beside a top-level `act` gave two records `act/2` and two `act/3` (`layer("act")` of 5
records, 268.99 for 158.72); a Dense `d` called twice inside `sub` gave two records `d#2` and
`layer("d#2")` raised "ambiguous". Now all of a call's records move together (`d#2`,
`d#2/selu`, ...), every name is unique and the totals are unchanged.
"""

import keras
import numpy as np
import pytest

from dkm_tf import energy

L = keras.layers
BATCHES = [None, 2]


class _Sub(keras.Model):
    def __init__(self, kind):
        super().__init__(name="sub")
        self.kind = kind
        act = "selu" if kind == "fused" else None
        self.d = L.Dense(8, activation=act, name="d")
        self.a = L.Activation("selu", name="act")

    def call(self, x):
        if self.kind == "shared":
            return self.d(self.d(x))
        return self.a(self.d(x)) if self.kind == "act" else self.d(x)


def _sub(kind):
    s = _Sub(kind)
    s(np.zeros((1, 8), "float32"))
    return s


def _alone(make):
    """The paper energy of `make()`'s layers in a model of their own (the reference)."""
    i = keras.Input((8,))
    return energy.estimate(keras.Model(i, make()(i))).paper_total


def _names(report):
    names = [r.name for r in report.layers]
    assert len(set(names)) == len(names), names
    return names


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("outer_first", [False, True])
def test_a_calls_ops_move_with_its_name(batch, outer_first):
    i = keras.Input((8,), batch_size=batch)
    s = _sub("fused")
    units = 8 if outer_first else 4
    outer = L.Dense(units, name="d")
    model = keras.Model(i, s(outer(i)) if outer_first else outer(s(i)))
    report = energy.estimate(model)
    names = _names(report)
    inner = ["d#2", "d#2/selu", "d#2/selu/2", "d#2/selu/3"]
    assert names == (["d", *inner] if outer_first else [*inner, "d"])
    d = report.layer("d")  # was the outer Dense plus the inner selu ops (382.25 / 223.53)
    assert d.macs == 8 * units and d.shape.within == () and report.record("d") is d
    assert d.paper_total == pytest.approx(_alone(lambda: L.Dense(units)), rel=1e-9)
    nested = report.layer("d#2")
    assert [r.name for r in nested.records] == inner and nested.macs == 64
    assert all(r.shape.within == ("sub",) for r in nested.records)
    assert nested.paper_total == pytest.approx(report.layer("sub").paper_total, rel=1e-12)
    assert nested.paper_total == pytest.approx(_alone(lambda: L.Dense(8, activation="selu")),
                                               rel=1e-9)
    assert report.paper_total == pytest.approx(d.paper_total + nested.paper_total, rel=1e-12)


@pytest.mark.parametrize("batch", BATCHES)
def test_an_activations_ops_inside_beside_a_top_level_namesake(batch):
    i = keras.Input((8,), batch_size=batch)
    model = keras.Model(i, L.Activation("selu", name="act")(L.Dense(8, name="d")(_sub("act")(i))))
    report = energy.estimate(model)
    assert _names(report) == ["d#2", "act#2", "act#2/2", "act#2/3", "d", "act", "act/2",
                              "act/3"]  # were act/2, act/3 twice
    selu = _alone(lambda: L.Activation("selu"))
    act = report.layer("act")  # was 5 records, 268.99 for 158.72
    assert [r.name for r in act.records] == ["act", "act/2", "act/3"]
    assert all(r.shape.within == () for r in act.records)
    assert act.paper_total == pytest.approx(selu, rel=1e-9)
    inner = report.layer("act#2")
    assert [r.name for r in inner.records] == ["act#2", "act#2/2", "act#2/3"]
    assert all(r.shape.within == ("sub",) for r in inner.records)
    assert inner.paper_total == pytest.approx(selu, rel=1e-9)
    dense = _alone(lambda: L.Dense(8))
    assert report.layer("sub").paper_total == pytest.approx(dense + selu, rel=1e-9)
    assert report.paper_total == pytest.approx(2 * (dense + selu), rel=1e-9)


@pytest.mark.parametrize("batch", BATCHES)
def test_a_layer_called_twice_inside_beside_a_top_level_namesake(batch):
    i = keras.Input((8,), batch_size=batch)
    model = keras.Model(i, L.Dense(4, name="d")(_sub("shared")(i)))
    report = energy.estimate(model)
    assert _names(report) == ["d#2", "d#3", "d"]  # were d#2, d#2: layer("d#2") raised
    assert report.layer("d#2").macs == 64 and report.layer("d#3").macs == 64
    assert report.layer("d#2").shape.within == ("sub",) == report.layer("d#3").shape.within
    assert report.layer("d").macs == 32 and report.layer("d").shape.within == ()
    assert report.macs == 64 + 64 + 32



class _TdSub(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.td = L.TimeDistributed(L.Dense(4, name="d"), name="td")

    def call(self, x):
        return self.td(x)


@pytest.mark.parametrize("batch", BATCHES)
def test_a_time_distributed_inside_beside_a_top_level_namesake(batch):
    s = _TdSub()
    s(np.zeros((1, 3, 8), "float32"))
    i = keras.Input((3, 8), batch_size=batch)
    report = energy.estimate(
        keras.Model(i, L.TimeDistributed(L.Dense(2, name="e"), name="td")(s(i))))
    _names(report)
    outer = report.layer("td")  # was both layers: 120 MACs (and td#2 named two steps)
    assert [r.name for r in outer.records] == ["td", "td#5", "td#6"] and outer.steps == 3
    assert outer.macs == 3 * 4 * 2 and all(r.shape.within == () for r in outer.records)
    j = keras.Input((3, 4))
    alone = energy.estimate(keras.Model(j, L.TimeDistributed(L.Dense(2))(j))).paper_total
    assert outer.paper_total == pytest.approx(alone, rel=1e-9)
    inner = report.layer("td#2")
    assert [r.name for r in inner.records] == ["td#2", "td#3", "td#4"] and inner.steps == 3
    assert inner.macs == 3 * 8 * 4 and all(r.shape.within == ("sub",) for r in inner.records)
    assert inner.paper_total == pytest.approx(report.layer("sub").paper_total, rel=1e-12)
    assert report.paper_total == pytest.approx(outer.paper_total + inner.paper_total, rel=1e-12)
