"""A `keras.layers.Pipeline` of Dense layers in `energy.estimate` of a Keras model (probe 18).

Measured before (2026-12-06): `attach_regularizer` regularized its Dense kernels yet listed the
Pipeline as skipped ("layer type not supported"); the energy reader skipped it as
"unsupported layer type Pipeline" (15 of the 93 MACs counted; its `.tflite` counts 93), and
`estimate(shared.model,
palettes=shared.palettes)` after `share_weights` (which clusters the Pipeline's Dense layers)
raised "Compression info names layer 'pd', which is not a conv or dense layer of the model".
"""

import keras
import numpy as np

import dkm_tf
from dkm_tf import energy

L = keras.layers


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = L.Pipeline([L.Dense(6, activation="relu", name="pd"), L.Dense(5, name="pd2")],
                   name="pipe")(inp)
    return keras.Model(inp, L.Dense(3, name="out")(x))


def test_pipeline_layers_are_read_and_their_palettes_charged(tmp_path):
    m = _model()
    r = energy.estimate(m)
    assert r.macs == 8 * 6 + 6 * 5 + 5 * 3  # old: 15
    assert {x.name for x in r.layers} == {"pd", "pd2", "out"}  # relu fused into pd
    shared = dkm_tf.share_weights(m, n_clusters=4)
    assert {p.layer_name for p in shared.palettes} == {"pd", "pd2", "out"}
    e = energy.estimate(shared.model, palettes=shared.palettes)  # old: ValueError
    assert {x.name: x.n_clusters for x in e.layers if x.n_clusters} == {
        "pd": 4, "pd2": 4, "out": 4}
    path = str(tmp_path / "p.tflite")
    x = np.random.RandomState(1).randn(3, 8).astype("float32")
    dkm_tf.export.to_tflite(m, path, format="float", sample_inputs=x)
    f = energy.estimate(path)
    assert f.macs == r.macs
    np.testing.assert_allclose(r.paper_total, f.paper_total, rtol=1e-9)


def test_attach_regularizer_does_not_list_a_regularized_pipeline_as_skipped():
    m = _model()
    r = dkm_tf.attach_regularizer(m, 4, include_dense=True)
    assert set(r) == {"pipe/pd/kernel", "pipe/pd2/kernel", "out/kernel"}
    # old: (('pipe', 'Pipeline', 'layer type not supported ...'),) though its kernels got one
    assert r.skipped == ()
    assert len(m.losses) == 3
