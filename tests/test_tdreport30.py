"""`EnergyReport.layer(name)` of a `TimeDistributed` layer: the whole layer, not its first step.

The Keras reader charges a TimeDistributed layer one copy of its records per step
(`keras_wrapped.step_records`). Before 2026-12-07 `report.layer("td")` returned the record
named `td`, the first step's: 1/T of the layer with no warning (a TimeDistributed Dense(4)
over 3 steps of 8: 32 MACs of 96); a TimeDistributed LSTM, EinsumDense, Lambda or model has
no record named `td` (`td/cell.kernel`, `td/kernel`, `clip`, `a`), so it raised `KeyError`;
`summary()` printed the first step as a row `td`. References here: MACs by hand, paper and
hierarchy totals summed over the records picked by name (not by the new step tags) and, for a
Dense and a conv, one step's hand-made `LayerShape` estimated by `estimate_layer`, times T.
"""

import json
import re

import keras
import numpy as np
import pytest

from dkm_tf import energy

L = keras.layers
TD = L.TimeDistributed


def _clip_scale(t):
    return keras.ops.clip(t, -1.0, 2.0) * 3.0


def _inner():
    j = keras.Input((8,))
    return keras.Model(j, L.Dense(4, name="b")(L.Dense(6, activation="relu", name="a")(j)))


def _rnn(gates, steps=5, features=4, units=4):
    return steps * (features * gates * units + units * gates * units)


# case -> (the TimeDistributed layer, step input shape, MACs of one step by hand, records
# of one step)
_CASES = {
    "dense": (lambda: TD(L.Dense(4, name="d"), name="td"), (8,), 8 * 4, 1),
    "conv1d": (lambda: TD(L.Conv1D(4, 3, name="c"), name="td"), (8, 2), 6 * 4 * 3 * 2, 1),
    "conv2d": (lambda: TD(L.Conv2D(4, 3, name="c"), name="td"), (6, 6, 2),
               4 * 4 * 4 * 3 * 3 * 2, 1),
    "lstm": (lambda: TD(L.LSTM(4, name="r"), name="td"), (5, 4), _rnn(4), 4),
    "gru": (lambda: TD(L.GRU(4, name="r"), name="td"), (5, 4), _rnn(3), None),
    "einsum": (lambda: TD(L.EinsumDense("ab,bc->ac", output_shape=(4,), name="e"),
                          name="td"), (8,), 8 * 4, 1),
    "td_of_td": (lambda: TD(TD(L.Dense(4, name="d")), name="td"), (2, 8), 2 * 8 * 4, 2),
    "lambda": (lambda: TD(L.Lambda(_clip_scale, name="lam"), name="td"), (8,), 0, 3),
    "model": (lambda: TD(_inner(), name="td"), (8,), 8 * 6 + 6 * 4, 2),
}


def _report(case, steps, batch, **kwargs):
    keras.utils.set_random_seed(0)
    build, step, _, _ = _CASES[case]
    inp = keras.Input((steps, *step), batch_size=batch)
    out = L.Dense(2, name="post")(build()(inp))  # another layer, not part of `td`
    return energy.estimate(keras.Model(inp, out), **kwargs)


def _td_records(report):
    """The records of `td`, picked by name: all but the `post` Dense's."""
    return [x for x in report.layers if x.name != "post"]


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("steps", [3, 5])
@pytest.mark.parametrize("case", list(_CASES))
def test_layer_is_every_step_of_a_time_distributed_layer(case, steps, batch):
    _, _, macs, per_step = _CASES[case]
    report = _report(case, steps, batch)
    mine = _td_records(report)
    total = report.layer("td")
    assert total.macs == steps * macs == sum(x.macs for x in mine)  # was 1/T: 32 of 96
    np.testing.assert_allclose(total.paper_total, sum(x.paper_total for x in mine), rtol=1e-12)
    np.testing.assert_allclose(total.hierarchy_total, sum(x.hierarchy_total for x in mine),
                               rtol=1e-12)
    for attr, parts in (("paper_terms", ("compute", "weights", "activations")),
                        ("hierarchy_parts", ("mac", "rf", "array", "buffer", "dram"))):
        got = getattr(total, attr)()
        for k in parts:
            np.testing.assert_allclose(got[k], sum(getattr(x, attr)()[k] for x in mine),
                                       rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(total.paper.total, total.paper_total, rtol=1e-12)
    np.testing.assert_allclose(total.hierarchy.total, total.hierarchy_total, rtol=1e-12)
    assert [x.name for x in total.records] == [x.name for x in mine]
    depth = 2 if case == "td_of_td" else 1
    assert total.steps == steps * (2 if depth == 2 else 1)
    if per_step is not None:
        assert len(mine) == steps * per_step
    # the post Dense is not part of it, and the report's total is both
    assert report.layer("post").macs + total.macs == report.macs
    # every step's records stay reachable by their own names
    for x in mine:
        assert report.record(x.name) is x
    if case in ("dense", "conv1d", "conv2d", "einsum"):
        last = f"td#{steps}" + ("/kernel" if case == "einsum" else "")
        assert report.layer(last).macs == macs  # one step's record, by its name
        assert report.record("td" + ("/kernel" if case == "einsum" else "")).macs == macs


@pytest.mark.parametrize("steps", [3, 5])
@pytest.mark.parametrize("case", ["dense", "conv1d"])
def test_layer_equals_hand_made_steps(case, steps):
    """One step's `LayerShape` by hand, estimated alone, times T."""
    one = (energy.dense_shape("x", in_features=8, units=4) if case == "dense" else
           energy.conv_shape("x", in_hw=(1, 8), in_c=2, out_hw=(1, 6), out_c=4,
                             kernel=(1, 3), op="Conv1D"))
    ref = energy.estimate_layer(one)
    total = _report(case, steps, None).layer("td")
    assert total.macs == steps * ref.macs
    np.testing.assert_allclose(total.paper_total, steps * ref.paper_total, rtol=1e-12)
    np.testing.assert_allclose(total.hierarchy_total, steps * ref.hierarchy_total, rtol=1e-12)
    assert total.shape.macs == total.macs and total.shape.name == "td"


@pytest.mark.parametrize("steps", [3, 5])
def test_compressed_and_baseline_layer_sum_every_step(steps):
    info = energy.SharingInfo(n_clusters=4, unit_dim=1, n_units=32)
    report = _report("dense", steps, None, weight_sharing={"d": info})
    after, before = report.layer("td"), report.baseline.layer("td")
    shape = energy.dense_shape("x", in_features=8, units=4)
    ref_after = energy.estimate_layer(shape, sharing=info)
    ref_before = energy.estimate_layer(shape)
    assert after.n_clusters == 4 and before.n_clusters is None
    assert [x.n_clusters for x in after.records] == [4] * steps
    np.testing.assert_allclose(after.paper_total, steps * ref_after.paper_total, rtol=1e-12)
    np.testing.assert_allclose(before.hierarchy_total, steps * ref_before.hierarchy_total,
                               rtol=1e-12)
    np.testing.assert_allclose(after.stored_weight_bits, ref_after.stored_weight_bits,
                               rtol=1e-12)  # the kernel is stored once, read every step
    row = next(r for r in report.summary().splitlines() if r.startswith("td "))
    cells = row.split()
    assert cells[:5] == ["td", f"[{steps}", "steps]", "Dense", str(steps * 32)]
    assert cells[5] == "4"
    assert cells[-2] == f"{before.paper_total / after.paper_total:.2f}"
    assert cells[-1] == f"{before.hierarchy_total / after.hierarchy_total:.2f}"


@pytest.mark.parametrize("case", ["dense", "lstm", "lambda"])
def test_tables_do_not_show_a_first_step_as_the_layer(case, tmp_path):
    steps = 3
    report = _report(case, steps, 2)
    lines = report.summary().splitlines()
    rows = [ln for ln in lines if re.match(r"^(td|clip|multiply)\S*\s", ln)]
    assert rows and all(f"{steps} steps]" in r for r in rows)  # each summed over the steps
    assert not [ln for ln in lines if re.match(r"^td#\d", ln)]  # no step rows
    if case == "dense":
        assert rows[0].split()[4] == "96"
    d = json.loads(json.dumps(report.to_dict()))
    (tot,) = d["layer_totals"]
    assert tot["name"] == "td" and tot["steps"] == steps
    assert tot["macs"] == report.layer("td").macs == sum(
        r["macs"] for r in d["layers"] if r["name"] != "post")
    np.testing.assert_allclose(tot["paper_total"], sum(
        r["paper_total"] for r in d["layers"] if r["name"] != "post"), rtol=1e-12)
    assert [r["step"] for r in d["layers"] if r["name"] != "post"][-1][1:] == [steps, steps]
    assert [r["step"] for r in d["layers"] if r["name"] == "post"] == [None]


def test_plots_sum_the_steps(tmp_path):
    pytest.importorskip("matplotlib")
    from dkm_tf.plots import plot_energy

    info = energy.SharingInfo(n_clusters=4, unit_dim=1, n_units=32)
    report = _report("dense", 3, None, weight_sharing={"d": info})
    plot = plot_energy(report, tmp_path / "e.png")
    labels = [t.get_text() for t in plot.figure.axes[1].get_xticklabels()]
    assert labels == ["td [3 steps]", "post"]
    heights = sorted(p.get_height() for p in plot.figure.axes[0].patches)
    np.testing.assert_allclose(
        sorted([report.layer("td").paper_total, report.baseline.layer("td").paper_total,
                report.layer("post").paper_total, report.baseline.layer("post").paper_total]),
        heights, rtol=1e-12)
    report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_second_call_of_a_time_distributed_layer():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    td = TD(L.Dense(8, name="d"), name="td")
    report = energy.estimate(keras.Model(inp, td(td(inp))))
    first, second = report.layer("td"), report.layer("td#4")  # the second call's first step
    assert first.macs == second.macs == 3 * 64
    assert first.macs + second.macs == report.macs
    assert [x.name for x in second.records] == ["td#4", "td#5", "td#6"]
    assert report.layer("td#2").macs == 64  # a step's record, by its name


def test_unknown_name_is_a_clear_error():
    report = _report("lstm", 3, None)
    with pytest.raises(KeyError) as e:
        report.layer("tdd")
    assert isinstance(e.value, ValueError)
    assert "No layer 'tdd'" in str(e.value) and "'td'" in str(e.value)
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    plain = energy.estimate(keras.Model(inp, L.LSTM(4, name="r")(inp)))
    with pytest.raises(KeyError, match=r"'r/cell\.kernel'"):  # its records' names
        plain.layer("r/cell")  # (since tdreport2 `layer("r")` is the LSTM's records' sum)
    with pytest.raises(KeyError, match="not charged in this report: no compute"):
        plain.layer(plain.skipped[0][0])
    with pytest.raises(TypeError, match="argument `name`"):
        report.layer(0)


@pytest.mark.parametrize("steps", ["td", (("td", 4, 3),), (("td", 0, 3),), ((1, 1, 3),)])
def test_bad_step_tags_are_refused(steps):
    with pytest.raises(ValueError, match="argument `steps`"):
        energy.dense_shape("x", in_features=8, units=4).__class__(
            name="x", layer="x", op="Dense", kind="dense", in_h=1, in_w=1, in_c=8, out_h=1,
            out_w=1, out_c=4, steps=steps)


def test_hand_made_step_records_are_summed():
    """`estimate_shapes` of records tagged by hand: `layer` sums them, the table too."""
    import dataclasses

    one = energy.dense_shape("td", in_features=8, units=4)
    shapes = [dataclasses.replace(one, name=n, steps=(("td", k, 2),))
              for k, n in ((1, "td"), (2, "td#2"))]
    report = energy.estimate_shapes(shapes)
    ref = energy.estimate_layer(one)
    assert report.layer("td").macs == 64 and report.record("td").macs == 32
    np.testing.assert_allclose(report.layer("td").hierarchy_total, 2 * ref.hierarchy_total,
                               rtol=1e-12)
    assert "td [2 steps]" in report.summary()


def test_cli_text_sums_the_steps(tmp_path):
    """`dkm-tf energy --model m.keras`'s table: one row for `td`, all 5 steps."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 8))
    path = str(tmp_path / "m.keras")
    keras.Model(inp, TD(L.Dense(4, name="d"), name="td")(inp)).save(path)
    lines = energy.energy_cli_text(path).splitlines()
    (row,) = [ln for ln in lines if ln.startswith("td")]
    assert row.split()[:5] == ["td", "[5", "steps]", "Dense", "160"]


def test_palettes_of_a_clustered_video_model_reach_every_step():
    """`share_weights` palettes of TimeDistributed Conv2D / Dense (`test_tdcluster29`'s
    model): each layer's K, and before / after ratios, of all 3 steps."""
    import dkm_tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 6, 6, 2))
    x = TD(L.Conv2D(4, 3, name="conv"), name="td_conv")(inp)
    x = TD(L.Dense(5, name="fc"), name="td_fc")(TD(L.Flatten(), name="td_flat")(x))
    model = keras.Model(inp, x)
    report = energy.estimate(model, palettes=dkm_tf.share_weights(model, n_clusters=4).palettes)
    for name, macs in (("td_conv", 3 * 4 * 4 * 4 * 3 * 3 * 2), ("td_fc", 3 * 64 * 5)):
        after, before = report.layer(name), report.baseline.layer(name)
        mine = [x for x in report.layers if re.fullmatch(name + r"(#\d+)?", x.name)]
        assert after.macs == before.macs == macs == sum(x.macs for x in mine)
        assert after.n_clusters == 4 and before.n_clusters is None
        np.testing.assert_allclose(after.paper_total, sum(x.paper_total for x in mine),
                                   rtol=1e-12)
        base = [x for x in report.baseline.layers if x.name in {m.name for m in mine}]
        np.testing.assert_allclose(before.hierarchy_total / after.hierarchy_total, sum(
            x.hierarchy_total for x in base) / sum(x.hierarchy_total for x in mine), rtol=1e-12)
        assert after.paper_total < before.paper_total


def test_time_distributed_model_holding_a_time_distributed():
    """TD(model of TD(Dense(4)) over 2 steps) over 3 steps: `td` all 6 records, `itd` (the
    inner call of the first outer step) its 2; the table sums each inner step over 3."""
    keras.utils.set_random_seed(0)
    j = keras.Input((2, 8))
    inner = keras.Model(j, TD(L.Dense(4, name="d"), name="itd")(j))
    inp = keras.Input((3, 2, 8))
    report = energy.estimate(keras.Model(inp, TD(inner, name="td")(inp)))
    assert report.macs == report.layer("td").macs == 3 * 2 * 8 * 4
    assert report.layer("itd").macs == report.layer("itd#3").macs == 2 * 8 * 4
    assert [x.name for x in report.layer("itd#3").records] == ["itd#3", "itd#4"]
    rows = [ln.split()[:5] for ln in report.summary().splitlines() if ln.startswith("itd")]
    assert rows == [["itd", "[td:", "3", "steps]", "Dense"],
                    ["itd#2", "[td:", "3", "steps]", "Dense"]]
