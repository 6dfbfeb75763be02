"""Record names the Keras energy reader gives, and what `EnergyReport.layer(name)` returns.

Before h31 (2026-12-07):
- a layer inside a nested model walked before a top-level layer of the same name took that
  name: a Dense(6) `d` in `nm` over 8 inputs and a Dense(4) `d` after `nm` were the records
  `d` (48 MACs, within `nm`) and `d#2` (24), and `report.layer("d")` was the inner Dense
  (48), while `model.get_layer("d")` is the outer one;
- an `Activation` of several ops named them `act#1`, `act#2`, ..., its second call's
  `act#2#1`, ...: `report.layer("act#2")` was the first call's second op; a
  LayerNormalization's ops were `ln`, `ln#2`, ..., so a shared one had two records `ln#2`
  and `report.layer("ln")` was its first op alone (6.06 of 219.9 paper units);
- `TimeDistributed(Activation("selu"))`'s ops `td#1`, `td#2`, `td#3` read as steps but were
  the ops of all steps: `report.layer("td")` raised KeyError; of a TimeDistributed
  LayerNormalization it was the first op (18.2 of 659.7).
"""

import json

import keras
import pytest

from dkm_tf import energy

L = keras.layers
BATCHES = [None, 2]


def _nested(batch, outer_first=False):
    ii = keras.Input((8,))
    nm = keras.Model(ii, L.Dense(6, name="d")(ii), name="nm")
    i = keras.Input((8,), batch_size=batch)
    if outer_first:  # the outer `d` walked first: Dense(8) `d`, then nm
        return keras.Model(i, nm(L.Dense(8, name="d")(i)))
    return keras.Model(i, L.Dense(4, name="d")(nm(i)))


def _row(summary, label):
    return next(line.split() for line in summary.splitlines() if line.split()[:1] == [label])


@pytest.mark.parametrize("batch", BATCHES)
def test_outer_layer_named_as_a_nested_ones_is_the_models_layer(batch):
    model = _nested(batch)
    report = energy.estimate(model)
    assert model.get_layer("d").units == 4
    outer = report.layer("d")  # was the inner Dense: 48 MACs, within nm
    assert outer.macs == 6 * 4 and outer.shape.within == () and outer.shape.out_c == 4
    assert report.record("d") is outer
    inner = report.layer("nm")
    assert inner.macs == 8 * 6 and [r.name for r in inner.records] == ["d#2"]
    assert report.layer("d#2").shape.within == ("nm",)
    assert report.macs == 8 * 6 + 6 * 4
    data = json.loads(json.dumps(report.to_dict()))
    assert {r["name"]: r["macs"] for r in data["layers"]} == {"d#2": 48, "d": 24}
    assert [(t["name"], t["records"], t["within"]) for t in data["layer_totals"]] == [
        ("nm", ["d#2"], [])]
    summary = report.summary()
    assert _row(summary, "d")[2] == "24" and _row(summary, "d#2")[2] == "48"


def test_outer_layer_walked_first_keeps_its_name_too():
    report = energy.estimate(_nested(None, outer_first=True))
    assert report.layer("d").macs == 8 * 8 and report.layer("d").shape.within == ()
    assert report.layer("nm").macs == 8 * 6


def test_nested_model_called_twice_beside_an_outer_namesake():
    ii = keras.Input((8,))
    nm = keras.Model(ii, L.Dense(8, name="d")(ii), name="nm")
    i = keras.Input((8,))
    model = keras.Model(i, L.Dense(4, name="d")(nm(nm(i))))
    report = energy.estimate(model)
    names = [x.name for x in report.layers]
    assert len(set(names)) == len(names) == 3
    assert report.layer("d").macs == 8 * 4 and report.layer("d").shape.within == ()
    assert report.layer("nm").macs == report.layer("nm#2").macs == 8 * 8


def test_cli_energy_names_the_outer_layer(tmp_path, capsys):
    from dkm_tf.cli_energy import run_energy

    path = str(tmp_path / "m.keras")
    _nested(None).save(path)
    text = run_energy(path)
    capsys.readouterr()
    assert _row(text, "d")[2] == "24" and _row(text, "d#2")[2] == "48"


@pytest.mark.parametrize("batch", BATCHES)
def test_second_call_of_an_activation_is_its_own_layer(batch):
    i = keras.Input((8,), batch_size=batch)
    act = L.Activation("selu", name="act")
    report = energy.estimate(keras.Model(i, act(L.Dense(8, name="d")(act(i)))))
    names = [x.name for x in report.layers]
    assert len(set(names)) == len(names)
    first, second = report.layer("act"), report.layer("act#2")  # was the 1st call's 2nd op
    assert [r.name for r in first.records] == ["act", "act/2", "act/3"]
    assert [r.name for r in second.records] == ["act#2", "act#2/2", "act#2/3"]
    assert [r.shape.eltwise_op for r in second.records] == ["add", "mul", "mul"]  # selu
    assert all(r.shape.in_w * r.shape.in_h * r.shape.in_c == 8 for r in second.records)
    assert report.paper_total == pytest.approx(
        first.paper_total + second.paper_total + report.layer("d").paper_total, rel=1e-12)
    totals = {t["name"]: t["records"] for t in report.to_dict()["layer_totals"]}
    assert totals == {"act": ["act", "act/2", "act/3"], "act#2": ["act#2", "act#2/2", "act#2/3"]}


def test_layer_norm_is_all_its_ops_and_a_shared_one_has_unique_names():
    i = keras.Input((8,))
    report = energy.estimate(keras.Model(i, L.LayerNormalization(name="ln")(i)))
    ln = report.layer("ln")  # was its first op: 6.06 of 219.9
    assert len(ln.records) == len(report.layers) == 5
    assert ln.paper_total == pytest.approx(report.paper_total, rel=1e-12)
    assert ln.hierarchy_total == pytest.approx(report.hierarchy_total, rel=1e-12)
    norm = L.LayerNormalization(name="ln")
    shared = energy.estimate(keras.Model(i, norm(L.Dense(8, name="d")(norm(i)))))
    names = [x.name for x in shared.layers]
    assert len(set(names)) == len(names)  # were two records `ln#2`
    assert shared.layer("ln#2").paper_total == pytest.approx(ln.paper_total, rel=1e-12)


def test_activation_beside_a_dense_named_as_its_second_call():
    i = keras.Input((8,))
    o = L.Dense(4, name="act#2")(L.Activation("selu", name="act")(i))
    report = energy.estimate(keras.Model(i, o))
    assert [x.name for x in report.layers] == ["act", "act/2", "act/3", "act#2"]
    assert report.layer("act#2").shape.op == "Dense" and report.layer("act#2").macs == 32
    assert len(report.layer("act").records) == 3


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("inner", ["selu", "ln"])
def test_time_distributed_activation_is_charged_per_step(batch, inner):
    i = keras.Input((3, 8), batch_size=batch)
    layer = L.Activation("selu", name="a") if inner == "selu" else L.LayerNormalization(
        name="n")
    report = energy.estimate(keras.Model(i, L.Dense(2, name="o")(L.TimeDistributed(
        layer, name="td")(i))))
    td = report.layer("td")  # was KeyError (selu), the first op of all steps (ln)
    assert td.steps == 3
    assert {r.shape.steps[0][1] for r in td.records} == {1, 2, 3}
    assert td.paper_total == pytest.approx(
        report.paper_total - report.layer("o").paper_total, rel=1e-12)
    assert td.hierarchy_total == pytest.approx(
        report.hierarchy_total - report.layer("o").hierarchy_total, rel=1e-12)
    whole = energy.estimate(keras.Model(i, L.Dense(2, name="o")(layer.__class__.from_config(
        layer.get_config())(i))))  # the same op over all 3 steps at once: same cost
    assert report.paper_total == pytest.approx(whole.paper_total, rel=1e-12)


def test_cluster_weights_rows_name_what_a_time_distributed_wraps():
    import dkm_tf

    keras.utils.set_random_seed(0)
    i = keras.Input((3, 5, 4))
    y = L.TimeDistributed(L.LSTM(4), name="tr")(i)
    y = L.TimeDistributed(L.LayerNormalization(), name="tln")(L.TimeDistributed(
        L.Dense(4), name="tdd")(y))
    model = keras.Model(i, y)
    with pytest.warns(UserWarning, match=r"tln \(TimeDistributed\(LayerNormalization\)"):
        _, report = dkm_tf.cluster_weights(model, 4, overrides={"tr": None},
                                           return_report=True)
    skipped = {n: k for n, k, _ in report.skipped}  # were all "TimeDistributed"
    assert skipped == {"tr": "TimeDistributed(LSTM)",
                       "tln": "TimeDistributed(LayerNormalization)"}
    assert [(n, k) for n, k, _ in report.clustered] == [("tdd", "TimeDistributed(Dense)")]
    assert "- tr (TimeDistributed(LSTM)): overrides say None" in report.summary()


def test_palettes_of_namesakes_of_one_size_stay_on_their_own_layers():
    """The outer `d` now keeps its name though walked second; the palettes paired by value
    (`same_names_pairing`) must still land on their own layers (a first version of the fix
    put the outer K=8 palette on the inner `d`; on cac6419 the records were right, but
    `layer("d")` was the inner one, K=2)."""
    import dkm_tf

    keras.utils.set_random_seed(0)
    ii = keras.Input((8,))
    nm = keras.Model(ii, L.Dense(6, name="d")(ii), name="nm")
    i = keras.Input((8,))
    model = keras.Model(i, L.Dense(8, name="d")(nm(i)))  # both kernels 48 weights
    inner, outer = nm.get_layer("d"), model.get_layer("d")
    j = keras.Input((6,))
    p_in = dkm_tf.share_weights(nm, n_clusters=2).palettes[0]
    p_out = dkm_tf.share_weights(keras.Model(j, outer(j)), n_clusters=8).palettes[0]
    inner.kernel.assign(p_in.decode())
    outer.kernel.assign(p_out.decode())
    for pals in ([p_out, p_in], [p_in, p_out]):
        report = energy.estimate(model, palettes=pals)
        assert report.layer("d").n_clusters == 8 and report.layer("nm").n_clusters == 2
    assert energy.estimate(model, palettes=[p_out]).layer("nm").n_clusters is None
    assert energy.estimate(model, palettes=[p_in]).layer("d").n_clusters is None


@pytest.mark.parametrize("batch", BATCHES)
def test_outer_layer_named_as_a_time_distributed_models_layer(batch):
    ii = keras.Input((8,))
    nm = keras.Model(ii, L.Dense(6, name="d")(ii), name="nm")
    i = keras.Input((3, 8), batch_size=batch)
    y = L.Dense(4, name="d")(L.TimeDistributed(nm, name="td")(i))
    report = energy.estimate(keras.Model(i, y))
    assert report.layer("d").macs == 3 * 6 * 4  # was 48: td's first step of the inner `d`
    assert report.layer("td").macs == 3 * 8 * 6 and report.layer("td").steps == 3


def test_a_path_to_a_nested_layer_names_its_records():
    report = energy.estimate(_nested(None))
    with pytest.raises(KeyError, match=r"'d' inside the nested call 'nm' is charged as the "
                                       r"records \['d#2'\]"):
        report.layer("nm/d")  # said "Closest names: none"
    with pytest.raises(KeyError, match="Closest names"):
        report.layer("nm/x")
