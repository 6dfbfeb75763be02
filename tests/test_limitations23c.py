"""Claims of KNOWN_LIMITATIONS.md checked against the code (audit of session 23, helper c).

`energy.estimate(model, palettes=...)` pairs the palettes of layers of one name (nested models)
by value; the same palette passed twice (both copies decoding to the first layer's weight) was
accepted as "charged alike" and charged the second layer with it, whatever that layer held
(its own K=8 palette charged as K=4, no note).
"""

import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

keras = pytest.importorskip("keras")


def _block(name):
    inp = keras.Input((8,))
    return keras.Model(inp, keras.layers.Dense(8, name="conv")(inp), name=name)


def _two_blocks():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    return keras.Model(inp, _block("b")(_block("a")(inp)))


def test_same_palette_twice_for_same_named_layers_is_refused():
    model = _two_blocks()
    k4 = dkm_tf.share_weights(model, n_clusters=4)
    k8 = dkm_tf.share_weights(model, n_clusters=8)
    shared = k4.model
    b_conv = shared.get_layer("b").get_layer("conv")
    b_conv.kernel.assign(k8.palettes[1].decode())  # 'a/conv' holds K=4, 'b/conv' K=8
    assert len(np.unique(b_conv.kernel.numpy())) == 8
    own = energy.estimate(shared, palettes=[k4.palettes[0], k8.palettes[1]])
    assert [lay.n_clusters for lay in own.layers] == [4, 8]
    with pytest.raises(ValueError, match=r"two palettes of conv/kernel.*'a/conv'"):
        energy.estimate(shared, palettes=[k4.palettes[0], k4.palettes[0]])


def test_one_palette_of_two_same_named_layers_still_pairs():
    model = _two_blocks()
    k4 = dkm_tf.share_weights(model, n_clusters=4)
    report = energy.estimate(k4.model, palettes=[k4.palettes[0]])
    assert [lay.n_clusters for lay in report.layers] == [4, None]
    report = energy.estimate(k4.model, palettes=k4.palettes)
    assert [lay.n_clusters for lay in report.layers] == [4, 4]
