"""Session 31 review of sigcli: ``train_classifier``'s warning only for a one-unit head, and
a binary cross-entropy of probabilities contradicted by outputs outside [0, 1].

* ``train_classifier`` warned an ordinary subclassed 10-class logits classifier (a
  ``keras.Model`` ending in a plain ``Dense(10)``) trained on a ``from_generator`` or
  ``.filter()``-ed ``tf.data`` dataset ("its outputs on the training data could not be
  read", "a custom or Lambda layer"): an error under ``filterwarnings=error``, before any
  training. Now only a one-unit head is warned of, and a subclassed model is named so.
* A custom linear one-unit last layer (logits) compiled with ``"binary_crossentropy"``
  (``from_logits=False``) was scored at 0.5 (0.86) and fine-tuned as probabilities with no
  word, by ``dkm_tf.compress`` and the command line, though its outputs leave [0, 1]: no
  accuracy now, with a note that the loss contradicts the output.
"""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402

L = keras.layers
ops = keras.ops
NOTE = "compiled with BinaryCrossentropy() (probabilities"


@keras.saving.register_keras_serializable(package="test_sigcli231")
class LinUnit231(L.Layer):
    """One unit with weights of its own and no activation: logits dkm_tf cannot read."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 1), initializer="glorot_uniform")
        self.b = self.add_weight(shape=(1,), initializer="zeros")

    def call(self, t):
        return ops.matmul(t, self.w) + self.b


class Sub231(keras.Model):
    """An ordinary subclassed classifier: Dense(16, relu) -> Dense(k), logits."""

    def __init__(self, k=10, **kwargs):
        super().__init__(**kwargs)
        self.h, self.d = L.Dense(16, activation="relu"), L.Dense(k)

    def call(self, t):
        return self.d(self.h(t))


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target.astype("int32")


def _generator(x, y):
    def gen():
        for i in range(0, len(x), 32):
            yield x[i:i + 32], y[i:i + 32]
    return tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, 64), tf.float32), tf.TensorSpec((None,), tf.int32)))


@pytest.mark.parametrize("kind", ["generator", "filter"])
def test_a_subclassed_ten_class_classifier_is_not_warned_of(kind):
    from dkm_tf.pipeline import train_classifier

    x, y = _digits()
    x, y = x[:256], y[:256]
    data = _generator(x, y) if kind == "generator" else tf.data.Dataset.from_tensor_slices(
        (x, y)).filter(lambda a, b: b >= 0).batch(32)
    keras.utils.set_random_seed(0)
    model = Sub231()
    with warnings.catch_warnings(record=True) as caught:  # Keras' "ran out of data" too
        warnings.simplefilter("always")
        train_classifier(model, data, epochs=1, verbose=0)
    said = [str(w.message) for w in caught if "from_logits" in str(w.message)]
    assert said == []  # was: UserWarning "... could not be read ..."
    assert model.loss.get_config()["from_logits"] is True  # as before: logits
    assert np.asarray(model.predict(x[:4], verbose=0)).shape == (4, 10)


def test_a_one_unit_subclassed_model_on_a_generator_is_still_warned_of_as_what_it_is():
    from dkm_tf.pipeline import train_classifier

    x, y = _digits()
    x, y = x[:256], (y[:256] >= 5).astype("int32")
    keras.utils.set_random_seed(0)
    with pytest.warns(UserWarning) as caught:
        train_classifier(Sub231(1), _generator(x, y), epochs=1, verbose=0)
    said = [str(w.message) for w in caught if "from_logits=True" in str(w.message)]
    assert len(said) == 1
    assert said[0].startswith("trained with the cross-entropy from_logits=True: the model is "
                              "a subclassed model"), said[0]
    assert "custom or Lambda" not in said[0]


_FITTED = []  # the weights of _linear_model's fit


def _linear_model(loss):
    """Dense(16, relu) -> LinUnit231, fitted as logits, compiled with ``loss``."""
    x, y = _digits()
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], (y[idx] >= 5).astype("int32")
    train, test = (x[:240], y[:240]), (x[240:340], y[240:340])

    def build():
        keras.utils.set_random_seed(0)
        inp = keras.Input((64,))
        return keras.Model(inp, LinUnit231()(L.Dense(16, activation="relu")(inp)))

    if not _FITTED:  # fitted once, for both tests
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True))
        model.fit(*train, epochs=3, batch_size=32, verbose=0)
        _FITTED.append(model.get_weights())
    fresh = build()
    fresh.set_weights(_FITTED[0])
    fresh.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return fresh, train, test


def _numpy_outputs(model, x):
    w1, b1, w2, b2 = (np.asarray(v, np.float64) for v in model.get_weights())
    return np.maximum(x.astype(np.float64) @ w1 + b1, 0.0) @ w2 + b2


def test_probabilities_compiled_on_outputs_outside_0_1_get_no_accuracy_and_a_note(tmp_path):
    from dkm_tf import cli
    from dkm_tf.training.probabilities import contradiction, unbounded, unit_threshold

    model, train, test = _linear_model("binary_crossentropy")
    out = _numpy_outputs(model, test[0][:32])
    np.testing.assert_allclose(np.asarray(model.predict(test[0][:32], verbose=0)), out,
                               rtol=1e-4, atol=1e-5)
    assert out.min() < 0.0 or out.max() > 1.0  # not probabilities, whatever the loss says
    assert unbounded(model, test[0]) is True
    assert unit_threshold(model, test[0]) is None  # was 0.5
    assert NOTE in contradiction(model, test[0])
    py = dkm_tf.compress(model, train, test, method="wr", n_clusters=8, seed=0, verbose=0,
                         progress=Progress(enabled=False))
    path = str(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    npz = str(tmp_path / "d.npz")
    np.savez(npz, x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "cluster_weights left 1 layer", UserWarning)
        result = cli.run_compress(path, dataset=npz, output_dir=str(tmp_path / "o"),
                                  tflite=False, plots=False, quiet=True, method="wr",
                                  n_clusters=8, seed=0, progress=Progress(enabled=False))
    for r in (py, result):  # was: threshold 0.5, accuracy 0.86, no note
        assert r.threshold is None and r.accuracy_before is None
        assert sum(NOTE in n for n in r.notes) == 1, r.notes


def test_logits_compiled_as_logits_and_a_sigmoid_as_probabilities_keep_their_thresholds():
    from dkm_tf.training.probabilities import unbounded, unit_threshold

    model, _, test = _linear_model(keras.losses.BinaryCrossentropy(from_logits=True))
    assert unbounded(model, test[0]) is True and unit_threshold(model, test[0]) == 0.0
    sig = keras.Sequential([keras.Input((64,)), L.Dense(1, activation="sigmoid")])
    assert unbounded(sig, test[0]) is False
