"""Session 30: ``dkm-tf`` run end to end on the real pretrained models, as a new user would.

(a) ``--dataset`` inputs that do not fit ``--model``: held-out inputs without labels are run
through the float model before ``compress`` checks its data, so an input size that did not fit
(fer's 64x64 model given 28x28 digits) was Keras' own error and exit status 1; a model of
several inputs given a ``.npz`` (one input array) failed the same way, with labels too
(``compress`` checked only a single-input model's x). Now both are a usage error naming
--dataset (exit 2) before any work, and ``dkm_tf.compress`` refuses one array for a model of
several inputs with its input names.

(b) ``format="tflm"`` of fer's mini-Xception (K=16, depthwise kernels per channel) named one
depthwise kernel of more than 128 values (``separable_conv2d_8``) while seven were: a user
following its advice got the next refusal, one layer at a time. Now one error names all.
"""

import io
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf import cli  # noqa: E402

L = keras.layers


def _run(*args):
    """``dkm-tf ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", *args], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def _save(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    return str(path)


def _two_inputs():
    keras.utils.set_random_seed(0)
    img, side = keras.Input((6, 6, 1), name="img"), keras.Input((3,), name="side")
    h = L.Flatten()(L.Conv2D(2, 3, name="c")(img))
    h = L.Concatenate()([h, L.Dense(2, name="s")(side)])
    return keras.Model([img, side], L.Dense(4, activation="softmax", name="o")(h))


def _one_input():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    out = L.Dense(4, activation="softmax", name="o")(L.Flatten()(L.Conv2D(2, 3, name="c")(inp)))
    return keras.Model(inp, out)


def _npz(path, shape, labels):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, *shape)).astype("float32")
    arrays = {"x_train": x[:8], "x_test": x[8:]}
    if labels:
        arrays.update(y_train=np.arange(8) % 4, y_test=np.arange(8) % 4)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("labels", [False, True])
def test_a_model_of_two_inputs_with_a_npz_is_a_usage_error_before_any_work(tmp_path, labels):
    model = _save(_two_inputs(), tmp_path / "two.keras")
    npz = _npz(tmp_path / "d.npz", (6, 6, 1), labels)
    out = tmp_path / "out"
    rc, printed, err = _run("compress", "--model", model, "--dataset", npz, "--output_dir",
                            str(out), "--quiet", "--noplots", "--notflite")
    assert rc == 2, err  # was 1: Keras' 'Layer "..." expects 2 named input(s)'
    assert err.startswith("dkm-tf: error: invalid --dataset: expected data that fits --model")
    assert "of 2 arrays, one per model input ('img', 'side')" in err
    assert "Received: one array of shape (8, 6, 6, 1)" in err
    assert "dkm_tf.compress" in err and "[model]" not in printed
    assert not out.exists()


def test_unlabelled_held_out_inputs_of_another_size_name_dataset(tmp_path):
    model = _save(_one_input(), tmp_path / "m.keras")
    npz = _npz(tmp_path / "d.npz", (5, 5, 1), labels=False)
    out = tmp_path / "out"
    rc, _, err = _run("compress", "--model", model, "--dataset", npz, "--output_dir",
                      str(out), "--quiet", "--noplots", "--notflite")
    assert rc == 2, err  # was 1: "Input 0 ... is incompatible with the layer"
    assert "invalid --dataset: expected data that fits --model" in err
    assert "Expected x of shape (samples, 6, 6, 1) (the model's input). Received: x of shape " \
           "(8, 5, 5, 1)" in err
    assert not out.exists()


def test_compress_refuses_one_array_for_a_model_of_two_inputs():
    model = _two_inputs()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 6, 1)).astype("float32")
    with pytest.raises(ValueError, match=r"`test_data`. Expected x as a list .* of 2 arrays, "
                       r"one per model input \('img', 'side'\). Received: a list of 1 array"):
        dkm_tf.compress(model, None, ([x], np.zeros(8, int)), method="wr", n_clusters=2,
                        verbose=0)
    # the right inputs still run (a list of two arrays)
    xs = [x, rng.normal(size=(8, 3)).astype("float32")]
    result = dkm_tf.compress(model, None, (xs, np.zeros(8, int)), method="wr", n_clusters=2,
                             verbose=0)
    want = np.mean(np.argmax(result.model.predict(xs, verbose=0), axis=1) == 0)
    assert result.accuracy_after == pytest.approx(want)


def test_tflm_refusal_names_every_table_too_large_at_once(tmp_path):
    # two depthwise kernels of 16 channels: per-channel K=16 keeps 9 values a channel, 144
    # distinct values a tensor (> 128, TFLite Micro's 7-bit limit); the 4-channel one fits
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 16))
    h = L.DepthwiseConv2D(3, padding="same", name="dw_a")(inp)
    h = L.DepthwiseConv2D(3, padding="same", name="dw_b")(h)
    model = keras.Model(inp, L.Dense(3, name="o")(L.GlobalAveragePooling2D()(h)))
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=16)
    sizes = {p.name: len(np.unique(p.decode())) for p in palettes}
    assert sizes["dw_a/kernel"] > 128 and sizes["dw_b/kernel"] > 128
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 16)).astype("float32")
    out = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"Invalid palette 'dw_[ab]/kernel' for "
                       r"format='tflm'") as e:
        dkm_tf.export.to_tflite(shared, str(out), format="tflm", palettes=palettes,
                                sample_inputs=x)
    text = str(e.value)
    assert "dw_a/kernel" in text and "dw_b/kernel" in text  # was one
    assert "so do 1 more: " in text
    assert not out.exists()
