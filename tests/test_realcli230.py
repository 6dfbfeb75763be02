"""Session 30, review R8 of the realcli round.

(a) The input-count check of ``check_data`` counted the top-level items of a list ``x``, so a
model built with nested inputs (``keras.Model([[a, b], c], ...)``, or ``[{"p": a, "q": b},
c]``) given ``x`` in the same nesting was refused ("a list of 2 arrays" for 3 inputs) while it
had compressed before that round; ``method="dkm"``, ``finetune``, ``dkm_retrain`` and
``distillation_targets`` crashed on such ``x`` in numpy ("inhomogeneous shape") even before.
The accepted forms (tuple, dict by input name, nested, optional input given None, flat list)
are tested here along with the refused ones.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.training.common import check_data  # noqa: E402

L = keras.layers
_RNG = np.random.default_rng(0)
XA, XB, XC = (_RNG.normal(size=(64, n)).astype("float32") for n in (3, 2, 4))
Y = (XA[:, 0] > 0).astype("int64")


def _three(structure):
    """A model of inputs a (3), b (2), c (4) built as ``structure`` ("flat", "nested" or
    "dict_nested")."""
    keras.utils.set_random_seed(0)
    a, b, c = (keras.Input((n,), name=s) for n, s in ((3, "a"), (2, "b"), (4, "c")))
    ins = {"flat": [a, b, c], "nested": [[a, b], c], "dict_nested": [{"p": a, "q": b}, c]}
    h = L.Dense(8, name="h")(L.Concatenate()([a, b, c]))
    return keras.Model(ins[structure], L.Dense(2, activation="softmax", name="o")(h))


def _accuracy(model, x):
    """The float model's accuracy on (x, Y), from its predictions in numpy."""
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == Y))


@pytest.mark.parametrize("structure,x", [
    ("nested", [[XA, XB], XC]),
    ("dict_nested", [{"p": XA, "q": XB}, XC]),
])
def test_nested_model_inputs_compress(structure, x):
    model = _three(structure)
    want = _accuracy(model, x)
    r = dkm_tf.compress(model, (x, Y), (x, Y), method="wr", n_clusters=2, verbose=0)
    # was DataMismatchError "... of 3 arrays ... Received: a list of 2 arrays"
    assert r.accuracy_before == pytest.approx(want, abs=1e-9)
    assert 0.0 <= r.accuracy_after <= 1.0
    assert {p.name for p in r.palettes} == {"h/kernel", "o/kernel"}
    for p in r.palettes:  # 2 shared values per kernel
        w = r.model.get_layer(p.name.split("/")[0]).kernel.numpy()
        assert np.unique(w).size <= 2


@pytest.mark.parametrize("what", ["dkm", "finetune", "dkm_retrain", "distillation_targets"])
def test_nested_model_inputs_train(what):
    """These crashed in numpy ("inhomogeneous shape") on nested x before the realcli round."""
    model, x = _three("nested"), [[XA, XB], XC]
    if what == "dkm":
        r = dkm_tf.compress(model, (x, Y), (x, Y), method="dkm", n_clusters=2, dkm_epochs=1,
                            finetune_epochs=1, verbose=0)
        assert 0.0 <= r.accuracy_after <= 1.0
    elif what == "finetune":
        out = dkm_tf.finetune(model, (x, Y), (x, Y), n_clusters=2, epochs=1)
        assert np.unique(out[0].get_layer("h").kernel.numpy()).size <= 2
    elif what == "dkm_retrain":
        out = dkm_tf.dkm_retrain(model, (x, Y), (x, Y), n_clusters=2, epochs=1)
        assert isinstance(out[0], keras.Model)
    else:
        t = dkm_tf.distillation_targets(model, x, Y)
        p = model.predict(x, verbose=0)
        np.testing.assert_allclose(t[:, :2], np.eye(2)[Y])
        np.testing.assert_allclose(t[:, 2:], np.log(p), atol=1e-5)


def test_nested_input_with_nan_is_refused():
    xa = XA.copy()
    xa[3, 1] = np.nan
    with pytest.raises(ValueError, match="Expected finite samples"):
        dkm_tf.dkm_retrain(_three("nested"), ([[xa, XB], XC], Y), n_clusters=2, epochs=1)


class _Opt(L.Layer):
    def call(self, a, b=None):
        return a if b is None else a + keras.ops.sum(b, -1, keepdims=True)


def _optional():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b", optional=True)
    h = L.Dense(8, name="h")(_Opt()(a, b))
    return keras.Model([a, b], L.Dense(2, activation="softmax", name="o")(h))


@pytest.mark.parametrize("structure,x", [
    ("flat", (XA, XB, XC)), ("flat", [XA, XB, XC]), ("flat", {"a": XA, "b": XB, "c": XC}),
    ("nested", [[XA, XB], XC]), ("dict_nested", [{"p": XA, "q": XB}, XC]),
], ids=["tuple", "flat_list", "dict_by_name", "nested", "dict_nested"])
def test_accepted_input_forms(structure, x):
    model = _three(structure)
    data = check_data("train_data", (x, Y), model)
    assert data[0] is x
    assert model.predict(x, verbose=0).shape == (64, 2)  # Keras reads it too


def test_optional_input_given_none_is_accepted():
    model = _optional()
    x = check_data("train_data", ([XA, None], Y), model)[0]
    assert x[1] is None
    t = dkm_tf.distillation_targets(model, [XA, None], Y)
    np.testing.assert_allclose(t[:, 2:], np.log(model.predict([XA, None], verbose=0)),
                               atol=1e-5)


@pytest.mark.parametrize("structure,x,got,form", [
    ("flat", XA, "one array of shape (64, 3)", "a list (or a dict keyed by input name)"),
    ("flat", [XA, XB], "a list of 2 arrays", "a list (or a dict keyed by input name)"),
    ("flat", (XA,), "a tuple of 1 array", "a list (or a dict keyed by input name)"),
    ("nested", [[XA, XB]], "a list of 2 arrays", "a nested list, as the model was built,"),
    ("nested", [[XA, XB], XC, XC], "a list of 4 arrays",
     "a nested list, as the model was built,"),
])
def test_refused_input_counts(structure, x, got, form):
    with pytest.raises(ValueError) as e:
        check_data("train_data", (x, Y), _three(structure))
    msg = str(e.value)
    assert f"Expected x as {form} of 3 arrays, one per model input ('a', 'b', 'c')" in msg
    assert msg.endswith(f"Received: {got}")


# (b) format="tflm": the refusal of several depthwise kernels over 128 values gave an
# `overrides` example naming the first layer only; it now names every layer, or their class
# when they share one, lists the palettes in model order with "(N values)".

def _depthwise(second):
    """Three depthwise layers of 16 channels: per-channel K=16 keeps 9 values a channel, 144
    a tensor (> 128); ``second`` is the class of the middle one."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 16))
    h = L.DepthwiseConv2D(3, padding="same", name="dw_c")(inp)
    h = (L.SeparableConv2D(16, 3, padding="same", name="dw_a") if second == "separable" else
         L.DepthwiseConv2D(3, padding="same", name="dw_a"))(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw_b")(h)
    return keras.Model(inp, L.Dense(3, name="o")(L.GlobalAveragePooling2D()(h)))


def _tflm_refusal(model, tmp_path, **kwargs):
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=16, **kwargs)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 16)).astype("float32")
    out = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="for format='tflm'") as e:
        dkm_tf.export.to_tflite(shared, str(out), format="tflm", palettes=palettes,
                                sample_inputs=x)
    assert not out.exists()
    return str(e.value), palettes


def test_tflm_refusal_overrides_name_the_shared_class(tmp_path):
    pytest.importorskip("tflite_micro")
    model = _depthwise("depthwise")
    text, palettes = _tflm_refusal(model, tmp_path)
    sizes = {p.name: len(np.unique(p.decode())) for p in palettes}
    assert all(sizes[f"{n}/kernel"] == 144 for n in ("dw_c", "dw_a", "dw_b")), sizes
    # model order, each with its count
    assert text.startswith("Invalid palette 'dw_c/kernel' for format='tflm': 144 distinct ")
    assert "(so do 2 more: 'dw_a/kernel' (144 values), 'dw_b/kernel' (144 values))" in text
    fix = "{'DepthwiseConv2D': {'granularity': 'per_tensor'}}"
    assert f"overrides={fix} clusters per tensor" in text  # was {'dw_c': ...} only
    assert "overrides={'DepthwiseConv2D': None} leaves them float32" in text
    assert """--overrides '{"DepthwiseConv2D": {"granularity": "per_tensor"}}'""" in text
    # following the advice exports
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=16, overrides=eval(fix))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 16)).astype("float32")
    dkm_tf.export.to_tflite(shared, str(tmp_path / "ok.tflite"), format="tflm",
                            palettes=palettes, sample_inputs=x)
    assert (tmp_path / "ok.tflite").stat().st_size > 0


def test_tflm_refusal_overrides_name_every_layer_of_mixed_classes(tmp_path):
    pytest.importorskip("tflite_micro")
    model = _depthwise("separable")
    text, palettes = _tflm_refusal(model, tmp_path)
    named = [p.name for p in palettes if len(np.unique(p.decode())) > 128]
    assert named == ["dw_c/kernel", "dw_a/depthwise_kernel", "dw_b/kernel"]
    assert text.startswith("Invalid palette 'dw_c/kernel' for format='tflm'")
    assert "'dw_a/depthwise_kernel' (144 values), 'dw_b/kernel' (144 values))" in text
    fix = ("{'dw_c': {'granularity': 'per_tensor'}, 'dw_a': {'granularity': 'per_tensor'}, "
           "'dw_b': {'granularity': 'per_tensor'}}")
    assert f"overrides={fix} clusters per tensor" in text
    assert "overrides={'dw_c': None, 'dw_a': None, 'dw_b': None} leaves them" in text
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=16, overrides=eval(fix))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 16)).astype("float32")
    dkm_tf.export.to_tflite(shared, str(tmp_path / "ok.tflite"), format="tflm",
                            palettes=palettes, sample_inputs=x)


# (c) dkm-tf compress printed the whole list of supported layer types once per skipped layer
# (mtcnn_onet: five PReLU layers, five copies); it is printed once.

def test_cli_prints_the_supported_layer_list_once(tmp_path, capsys):
    import io  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    from dkm_tf import cli  # noqa: PLC0415
    from dkm_tf.graph.clusterable import SUPPORTED_LAYERS  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    h = L.PReLU(name="p1")(L.Conv2D(2, 3, name="c")(inp))
    h = L.PReLU(name="p2")(L.Dense(4, name="d")(L.Flatten()(h)))
    model = keras.Model(inp, L.Dense(4, activation="softmax", name="o")(h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "p.keras")
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 1)).astype("float32")
    np.savez(tmp_path / "d.npz", x_train=x[:8], x_test=x[8:], y_train=np.arange(8) % 4,
             y_test=np.arange(8) % 4)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "p.keras"), "--dataset",
                  str(tmp_path / "d.npz"), "--output_dir", str(tmp_path / "out"), "--method",
                  "wr", "--noplots", "--notflite"], stdout=out, stderr=err)
    printed = out.getvalue() + capsys.readouterr().out  # the summary: print()
    assert rc == 0, err.getvalue()
    full = ", ".join(SUPPORTED_LAYERS)
    assert printed.count(full) == 1  # was 2, once a skipped layer
    assert "skipped p1: PReLU is not a supported kernel layer\n" in printed
    assert "skipped p2: PReLU is not a supported kernel layer\n" in printed
    assert f"supported kernel layers: {full}\n" in printed
