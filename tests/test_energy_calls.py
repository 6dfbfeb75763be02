"""Energy of layers called more than once, and of dilated convs in a `.tflite`.

A shared layer (one Dense / Conv2D called at two places) and a nested model called twice (a
Siamese tower) are charged once per call in the model's own graph, like the `.tflite` the
converter writes; a call made in another model is not charged. A dilated conv, which the
converter lowers to SPACE_TO_BATCH_ND -> conv -> BATCH_TO_SPACE_ND, is charged for all its
blocks in float, int8 and palettized files, as the Keras reader and a hand count charge it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dkm_tf import energy
from dkm_tf.energy.keras_reader import read_keras_model
from dkm_tf.energy.shapes import SharingInfo
from dkm_tf.energy.tflite_reader import read_tflite
from dkm_tf.export import to_tflite
from dkm_tf.graph.share import share_weights

L = keras.layers


def _float_file(model, path):
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return str(path)


def shared_dense():
    i = keras.Input((8,))
    d = L.Dense(8, name="dense")
    return keras.Model(i, d(d(i))), 2 * 8 * 8


def shared_conv2d():
    i = keras.Input((6, 6, 4))
    c = L.Conv2D(4, 3, padding="same", name="conv")
    return keras.Model(i, c(c(i))), 2 * 6 * 6 * 4 * 9 * 4


def siamese():
    ti = keras.Input((8,))
    tower = keras.Model(ti, L.Dense(8, name="dense")(ti), name="tower")
    a, b = keras.Input((8,)), keras.Input((8,))
    return keras.Model([a, b], L.Add()([tower(a), tower(b)])), 2 * 8 * 8


def two_input_shared_tower():
    """A conv + dense tower of two inputs, called on two pairs of inputs."""
    x1, x2 = keras.Input((6, 6, 3)), keras.Input((6, 6, 3))
    y = L.Conv2D(4, 3, name="conv")(L.Add()([x1, x2]))
    tower = keras.Model([x1, x2], L.Dense(5, name="dense")(L.Flatten()(y)), name="tower")
    ins = [keras.Input((6, 6, 3)) for _ in range(4)]
    out = L.Concatenate()([tower(ins[:2]), tower(ins[2:])])
    return keras.Model(ins, out), 2 * (4 * 4 * 4 * 27 + 64 * 5)


@pytest.mark.parametrize("build", [shared_dense, shared_conv2d, siamese,
                                   two_input_shared_tower])
def test_each_call_is_charged_like_the_float_file(build, tmp_path):
    keras.utils.set_random_seed(0)
    model, hand = build()
    assert energy.estimate(model).macs == hand
    assert energy.estimate(_float_file(model, tmp_path / "m.tflite")).macs == hand


def test_later_calls_are_named_apart_and_keep_their_layer():
    keras.utils.set_random_seed(0)
    model, _ = siamese()
    shapes, skipped = read_keras_model(model)
    dense = [s for s in shapes if s.kind == "dense"]
    assert [(s.name, s.layer) for s in dense] == [("dense", "dense"), ("dense#2", "dense")]
    assert not any("nested model called" in why for _, why in skipped)
    info = SharingInfo(n_clusters=4, unit_dim=1, n_units=64)
    rep = energy.estimate(model, weight_sharing={"dense": info})
    shared = [x.name for x in rep.layers if x.n_clusters == 4]
    assert shared == ["dense", "dense#2"]             # the same stored weights, both calls


def test_nested_model_called_at_other_shapes_is_reported():
    """A tower with a dynamic length, called on lengths 6 and 10: read at its own graph's
    shapes (unknown length: its Conv1D is skipped), and each such call says so."""
    keras.utils.set_random_seed(0)
    ti = keras.Input((None, 4))
    tower = keras.Model(ti, L.Conv1D(4, 3, name="c")(ti), name="tower")
    a, b = keras.Input((6, 4)), keras.Input((10, 4))
    model = keras.Model([a, b], [tower(a), tower(b)])
    _, skipped = read_keras_model(model)
    assert [n for n, why in skipped if why.startswith("nested model called")] == \
        ["tower", "tower#2"]


def test_calls_in_other_models_are_not_charged():
    keras.utils.set_random_seed(0)
    d = L.Dense(8, name="dense")
    i1, i2 = keras.Input((8,)), keras.Input((8,))
    once, twice = keras.Model(i1, d(i1)), keras.Model(i2, d(d(i2)))
    assert energy.estimate(once).macs == 64
    assert energy.estimate(twice).macs == 128


def test_batch_norm_and_activations_per_call(tmp_path):
    """A tower's Conv2D + BatchNormalization is folded at each call; a shared Dense's silu
    is charged (one "mul") at each call, as the float file charges them."""
    keras.utils.set_random_seed(0)
    ti = keras.Input((6, 6, 3))
    tower = keras.Model(ti, L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="c")(ti)),
                        name="tower")
    a, b = keras.Input((6, 6, 3)), keras.Input((6, 6, 3))
    d = L.Dense(8, activation="silu", name="d")
    y = L.Concatenate()([L.Flatten()(tower(a)), L.Flatten()(tower(b))])
    model = keras.Model([a, b], d(L.Dense(128, name="e")(d(y))))
    shapes, skipped = read_keras_model(model)
    folded = [n for n, why in skipped if why.startswith("folded into")]
    assert folded == ["bn", "bn#2"]
    muls = [s.name for s in shapes if s.kind == "eltwise" and s.eltwise_op == "mul"]
    assert muls == ["d/silu", "d#2/silu"]
    hand = 2 * 4 * 4 * 4 * 27 + 2 * 128 * 8 + 8 * 128
    assert energy.estimate(model).macs == hand
    path = _float_file(model, tmp_path / "m.tflite")
    assert energy.estimate(path).macs == hand
    assert sum(s.eltwise_op == "mul" for s in read_tflite(path)[0]) == len(muls)


def dilated_conv2d(batch=None):
    i = keras.Input((12, 12, 3), batch_size=batch)
    return keras.Model(i, L.Conv2D(8, 3, dilation_rate=2)(i)), 8 * 8 * 8 * 27


def dilated_depthwise(batch=None):
    i = keras.Input((12, 12, 8), batch_size=batch)
    return (keras.Model(i, L.DepthwiseConv2D(3, dilation_rate=2, padding="same")(i)),
            12 * 12 * 8 * 9)


def causal_dilated_conv1d(batch=None):
    i = keras.Input((16, 4), batch_size=batch)
    return (keras.Model(i, L.Conv1D(8, 3, padding="causal", dilation_rate=2)(i)),
            16 * 8 * 12)


DILATED = [dilated_conv2d, dilated_depthwise, causal_dilated_conv1d]


@pytest.mark.parametrize("build", DILATED)
def test_dilated_conv_float_file_charges_all_blocks(build, tmp_path):
    keras.utils.set_random_seed(0)
    model, hand = build()
    rep = energy.estimate(_float_file(model, tmp_path / "m.tflite"))
    assert energy.estimate(model).macs == rep.macs == hand
    assert [n for n, why in rep.skipped if why.startswith("unsupported")] == []
    assert sum(why == "no compute" for _, why in rep.skipped) >= 2   # the block reshuffles
    model3, _ = build(batch=3)                                         # a fixed batch of 3
    assert energy.estimate(_float_file(model3, tmp_path / "b3.tflite")).macs == hand


@pytest.mark.parametrize("build", DILATED)
def test_dilated_conv_int8_and_palettized_files_charge_all_blocks(build, tmp_path):
    keras.utils.set_random_seed(0)
    model, hand = build()
    shared = share_weights(model, 4)
    x = np.random.default_rng(0).standard_normal(
        (4,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    files = {
        "int8": to_tflite(shared.model, tmp_path / "q.tflite", "int8", sample_inputs=x),
        "once": to_tflite(shared.model, tmp_path / "o.tflite", "palettized", shared.palettes,
                          x, decode="once", keep_float=None),
        "per_invoke": to_tflite(shared.model, tmp_path / "p.tflite", "palettized",
                                shared.palettes, x, decode="per_invoke"),
    }
    macs = {label: energy.estimate(f.path).macs for label, f in files.items()}
    assert macs == dict.fromkeys(files, hand)
    assert energy.estimate(shared.model).macs == hand
