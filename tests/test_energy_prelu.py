"""PReLU (and LeakyReLU) are charged the same by the Keras, traced-graph and TFLite readers.

A PReLU is one "affine" element-wise record named after its layer, with its alpha values as
parameters (`shapes.prelu_shape`); before, a Functional model skipped it, a traced subclassed
one charged its final AddV2 as an "add" (reporting the Neg ops as unsupported) and a .tflite
file skipped its PRELU op.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from testing import layer_stack  # noqa: E402

from dkm_tf import energy  # noqa: E402

L = keras.layers
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="tracing and TFLite conversion need the TensorFlow backend")
REL = 1e-12  # the readers build the same records: totals agree to rounding


def _layers():
    return [L.Conv2D(4, 3, name="c1"), L.PReLU(shared_axes=[1, 2], name="p1"),
            L.Flatten(name="flat"), L.Dense(3, name="d1")]


def _functional():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    x = inp
    for layer in _layers():
        x = layer(x)
    return keras.Model(inp, x, name="tiny")


def _subclassed(layers, shape):
    keras.utils.set_random_seed(0)
    model = layer_stack(layers, "tiny_sub")
    model(np.zeros((1,) + shape, "float32"))
    return model


def _tflite(model, path):
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return str(path)


def _records(report):
    return [(x.shape.kind, x.shape.eltwise_op, x.shape.output_size, x.shape.n_params, x.macs)
            for x in report.layers]


def _three(layers, shape, tmp_path):
    """Reports of the same layers as a Functional model, a traced subclassed one, a .tflite."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    x = inp
    for layer in layers():
        x = layer(x)
    functional = keras.Model(inp, x)
    return (energy.estimate(functional),
            energy.estimate(_subclassed(layers(), shape), input_shape=shape),
            energy.estimate(_tflite(functional, tmp_path / "m.tflite")))


def test_prelu_record_matches_hand_computation():
    report = energy.estimate(_functional())
    assert "p1" not in dict(report.skipped)
    prelu = [x for x in report.layers if x.shape.layer == "p1"]
    assert len(prelu) == 1 and prelu[0].name == "p1"
    shape = prelu[0].shape
    # Conv2D(4, 3) valid on 8 x 8: 6 x 6 x 4 outputs; shared_axes=[1, 2]: one alpha per channel
    elements, alphas = 6 * 6 * 4, 4
    assert (shape.kind, shape.eltwise_op, shape.output_size, shape.n_params) == \
        ("eltwise", "affine", elements, alphas)
    assert shape.input_size == elements
    # paper metric at 16 bits: per output B_w·B_x + B_w + B_x full adders, 2 weight and 1
    # activation reads of 16 bits; κ = 6·FA_MAC / 32 with FA_MAC(D=1) = 256 + 32 - 1
    bw = bx = 16
    fa_mac = bw * bx + bw + bx - 1
    kappa = 6 * fa_mac / (bw + bx)
    expected = (elements * (bw * bx + bw + bx) + kappa * elements * (2 * bw + bx)) / fa_mac
    assert prelu[0].paper_total == pytest.approx(expected, rel=1e-12)


@TF_ONLY
def test_functional_traced_and_tflite_charge_prelu_alike(tmp_path):
    functional = _functional()
    sub = _subclassed(_layers(), (8, 8, 2))
    sub.set_weights(functional.get_weights())
    reports = {"keras": energy.estimate(functional),
               "traced": energy.estimate(sub, input_shape=(8, 8, 2)),
               "tflite": energy.estimate(_tflite(functional, tmp_path / "tiny.tflite"))}
    expected = [("conv", "", 144, 0, 6 * 6 * 4 * 3 * 3 * 2), ("eltwise", "affine", 144, 4, 0),
                ("dense", "", 3, 0, 144 * 3)]
    for name, report in reports.items():
        assert _records(report) == expected, name
        assert report.layers[1].name.startswith("p1"), name  # .tflite: "p1_1"
        assert not any(r.startswith("unsupported") for _, r in report.skipped), name
        assert report.paper_total == pytest.approx(reports["keras"].paper_total, rel=REL)
        assert report.hierarchy_total == pytest.approx(reports["keras"].hierarchy_total,
                                                       rel=REL)


@TF_ONLY
def test_unshared_prelu_after_dense_and_a_prelu_called_twice(tmp_path):
    def layers():
        return [L.Flatten(), L.Dense(5, name="fc"), L.PReLU(name="pd")]

    keras_r, traced, tflite = _three(layers, (2, 3), tmp_path)
    for report in (keras_r, traced, tflite):
        assert _records(report)[-1] == ("eltwise", "affine", 5, 5, 0)
        assert report.hierarchy_total == pytest.approx(keras_r.hierarchy_total, rel=REL)

    class Twice(keras.Model):
        def __init__(self):
            super().__init__()
            self.pp = L.PReLU(name="pp")

        def call(self, x):
            return self.pp(self.pp(x) - 1.0)

    model = Twice()
    model(np.zeros((1, 4, 3), "float32"))
    report = energy.estimate(model, input_shape=(4, 3))
    prelu = [x.shape for x in report.layers if x.shape.layer == "pp"]
    assert [(s.name, s.output_size, s.n_params) for s in prelu] == [("pp", 12, 12),
                                                                     ("pp#2", 12, 12)]
    assert report.skipped == ()


@TF_ONLY
def test_leaky_relu_layer_charged_and_fused_activation_not(tmp_path):
    def layers():
        return [L.Conv2D(4, 3, activation="leaky_relu", name="c"), L.LeakyReLU(name="lk"),
                L.Flatten(), L.Dense(2, name="d")]

    reports = _three(layers, (6, 6, 1), tmp_path)
    for report in reports:
        assert _records(report) == [("conv", "", 64, 0, 64 * 9), ("eltwise", "relu", 64, 0, 0),
                                    ("dense", "", 2, 0, 128)]
        assert report.hierarchy_total == pytest.approx(reports[0].hierarchy_total, rel=REL)
    assert any("activation of layer c_1, fused" in r for _, r in reports[2].skipped)


@TF_ONLY
def test_mtcnn_onet_functional_traced_and_tflite_agree(tmp_path):
    pytest.importorskip("lz4")
    onet_mod = pytest.importorskip("mtcnn.network.onet")
    from mtcnn.utils.tensorflow import load_weights

    net = onet_mod.ONet()
    net.build()
    net.set_weights(load_weights("onet.lz4"))
    inp = keras.Input((48, 48, 3))
    twin = keras.Model(inp, net.call(inp), name="onet")
    reports = (energy.estimate(twin), energy.estimate(net, input_shape=(48, 48, 3)),
               energy.estimate(_tflite(twin, tmp_path / "onet.tflite")))
    # 48 -> conv 46 -> pool(3, 2, same) 23 -> conv 21 -> pool(3, 2) 10 -> conv 8 -> pool 4
    # -> conv(2) 3; then Dense(256)
    prelus = [(46 * 46 * 32, 32), (21 * 21 * 64, 64), (8 * 8 * 64, 64), (3 * 3 * 128, 128),
              (256, 256)]
    for report in reports:
        got = [(x.shape.output_size, x.shape.n_params) for x in report.layers
               if x.shape.eltwise_op == "affine"]
        assert got == prelus
        assert _records(report) == _records(reports[0])
        assert report.paper_total == pytest.approx(reports[0].paper_total, rel=REL)
        assert report.hierarchy_total == pytest.approx(reports[0].hierarchy_total, rel=REL)
    assert reports[0].hierarchy_total == pytest.approx(2.47088e8, rel=1e-5)
