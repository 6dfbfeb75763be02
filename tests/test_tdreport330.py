"""`EnergyReport` layer totals: review R9 of the whole-layer totals (tdreport3, 2026-12-07).

Found on 4c46528: `to_dict()["layer_totals"]` rows of no `within` double-counted a nested
model holding one LSTM called twice (nm, nm#2, r, r#2: 2304 MACs of 1152), as two calls of
exactly the same records were not within each other; `LayerTotal.stored_weight_bits` of a
Lambda calling a Dense(8) twice counted its 8x8 kernel twice (2048 bits, not 1024), its
records `lam` and `lam/2` read as two parts of `d`; an `Activation("selu", name="act")`'s
ops `act#1`..`act#3` beside a Dense named `act#2` gave two records `act#2` (`layer("act#2")`
raised ValueError). References: the report's own record
sums (each record once), MACs by hand, kernel bits from the Keras kernels' sizes.
"""

import json

import keras
import numpy as np
import pytest

from dkm_tf import energy

L = keras.layers
TD = L.TimeDistributed
BATCHES = [None, 2]


def _nested_lstm_twice(batch):
    j = keras.Input((3, 8))
    nm = keras.Model(j, L.LSTM(4, name="r")(j), name="nm")
    i = keras.Input((3, 8), batch_size=batch)
    return keras.Model(i, L.Concatenate()([nm(i), nm(i)]))


def _lambda_chain(batch):
    i = keras.Input((8,), batch_size=batch)
    h = L.Lambda(lambda t: keras.ops.clip(t * 2.0 + 1.0, 0.0, 1.0), name="lam")(i)
    return keras.Model(i, L.Dense(4, name="o")(h))


def _td_of_model(batch):
    j = keras.Input((8,))
    inner = keras.Model(j, L.Dense(4, name="d2")(L.Dense(6, name="d1")(j)), name="nm")
    i = keras.Input((3, 8), batch_size=batch)
    return keras.Model(i, TD(inner, name="td")(i))


def _nested_in_nested(batch):
    j = keras.Input((3, 8))
    nm = keras.Model(j, L.LSTM(4, name="r")(j), name="nm")
    k = keras.Input((3, 8))
    outer = keras.Model(k, nm(k), name="outer")
    i = keras.Input((3, 8), batch_size=batch)
    return keras.Model(i, L.Dense(2, name="o")(outer(i)))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("build", [_nested_lstm_twice, _lambda_chain, _td_of_model,
                                   _nested_in_nested])
def test_rows_of_no_within_sum_to_the_report(build, batch):
    keras.utils.set_random_seed(0)
    report = energy.estimate(build(batch))
    rows = json.loads(json.dumps(report.to_dict()))["layer_totals"]
    assert rows
    held = {n for r in rows for n in r["records"]}
    top = [r for r in rows if not r["within"]]
    outside = [x for x in report.layers if x.name not in held]
    macs = sum(r["macs"] for r in top) + sum(x.macs for x in outside)
    paper = sum(r["paper_total"] for r in top) + sum(x.paper_total for x in outside)
    assert macs == report.macs
    assert paper == pytest.approx(sum(x.paper_total for x in report.layers), rel=1e-12)


@pytest.mark.parametrize("batch", BATCHES)
def test_nested_lstm_twice_rows(batch):
    report = energy.estimate(_nested_lstm_twice(batch))
    lstm = 3 * (8 * 16 + 4 * 16)  # 3 steps of the 8x16 kernel and 4x16 recurrent kernel
    rows = {r["name"]: r for r in report.to_dict()["layer_totals"]}
    assert {n: (r["macs"], r["within"]) for n, r in rows.items()} == {
        "nm": (lstm, []), "nm#2": (lstm, []), "r": (lstm, ["nm"]), "r#2": (lstm, ["nm#2"])}
    assert report.macs == 2 * lstm


@pytest.mark.parametrize("batch", BATCHES)
def test_lambda_calling_a_dense_twice_stores_its_kernel_once(batch):
    keras.utils.set_random_seed(0)
    d = L.Dense(8, name="d")
    i = keras.Input((8,), batch_size=batch)
    h = L.Lambda(lambda t: d(d(t)), name="lam")(i)
    report = energy.estimate(keras.Model(i, L.Dense(4, name="o")(h)))
    bits = int(np.prod(d.kernel.shape)) * 16  # one 8x8 kernel at B_w = 16
    assert bits == 1024
    lam = report.layer("lam")
    assert lam.macs == 2 * 8 * 8 and len(lam.records) == 2
    assert lam.stored_weight_bits == bits  # was 2048: parts "" and "2" of `d`


@pytest.mark.parametrize("batch", BATCHES)
def test_lstm_parts_are_each_stored_once(batch):
    keras.utils.set_random_seed(0)
    model = _nested_lstm_twice(batch)
    report = energy.estimate(model)
    cell = model.get_layer("nm").get_layer("r").cell
    bits = (int(np.prod(cell.kernel.shape)) + int(np.prod(cell.recurrent_kernel.shape))) * 16
    assert bits == (8 * 16 + 4 * 16) * 16
    assert report.layer("nm").stored_weight_bits == bits
    assert report.layer("r#2").stored_weight_bits == bits


@pytest.mark.parametrize("batch", BATCHES)
def test_activation_ops_skip_the_models_layer_names(batch):
    keras.utils.set_random_seed(0)
    i = keras.Input((8,), batch_size=batch)
    o = L.Dense(4, name="act#2")(L.Activation("selu", name="act")(i))
    report = energy.estimate(keras.Model(i, o))
    names = [x.name for x in report.layers]
    # was act#1, act#2, act#3, act#2; then act#1, act#3, act#4, act#2; since h31 the ops are
    # `act`, `act/2`, ... (`activations.op_name`), never a layer's name
    assert names == ["act", "act/2", "act/3", "act#2"]
    dense = report.layer("act#2")  # raised ValueError: ambiguous
    assert dense.shape.op == "Dense" and dense.macs == 8 * 4
    act = report.layer("act")
    assert [r.name for r in act.records] == ["act", "act/2", "act/3"]
    assert act.paper_total == pytest.approx(
        sum(x.paper_total for x in report.layers[:3]), rel=1e-12)


def test_layer_norm_ops_skip_the_models_layer_names():
    keras.utils.set_random_seed(0)
    i = keras.Input((8,))
    o = L.Dense(4, name="ln#2")(L.LayerNormalization(name="ln")(i))
    plain = [x.name for x in energy.estimate(keras.Model(i, L.LayerNormalization(
        name="ln")(i))).layers]
    names = [x.name for x in energy.estimate(keras.Model(i, o)).layers]
    assert plain[:2] == ["ln", "ln/2"]  # `ln`, `ln#2`, ... before h31
    assert names[-1] == "ln#2" and names.count("ln#2") == 1
    assert names[:-1] == plain


def test_activation_rows_take_their_own_baseline():
    import dkm_tf

    keras.utils.set_random_seed(0)
    i = keras.Input((8,))
    model = keras.Model(i, L.Dense(4, name="act#2")(L.Activation("selu", name="act")(i)))
    _, palettes, _ = dkm_tf.share_weights(model, n_clusters=4)
    report = energy.estimate(model, palettes=palettes)
    selu = [line.split() for line in report.summary().splitlines()
            if "Activation:selu" in line]
    assert len(selu) == 3
    # no kernel: compressed and uncompressed costs equal (was 4.05 / 1.85, the Dense's baseline)
    assert all(float(row[-2]) == 1.0 and float(row[-1]) == 1.0 for row in selu)
