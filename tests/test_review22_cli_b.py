"""Second review of session 22's ``--custom_objects`` and output-activation fixes.

- ``output_activation`` followed the op that made the output, so an op that keeps the
  values after the final softmax / sigmoid (``ops.cast``, ``ops.reshape``, ``ops.clip``, a
  ``Dropout``) hid it: ``default_loss`` then read probabilities as logits (a regression of
  the first fix; the last-layer rule had read them right).
- An ``.h5`` model file names a class or function without its module: a user's
  ``LayerNormalization`` subclass (the one the model was saved with) was silently replaced by
  Keras' own once names Keras knows were left out of the scope (outputs 0.46 off). Such a
  name, defined by the user and named by the ``.h5`` file, is refused (re-save as ``.keras``).
- A helper defined in two ``--custom_objects`` files was refused even when the model names it
  nowhere; now only objects the model file names (a class, an activation, a loss) are refused,
  and a helper whose name is only a string of the config (a layer's name, ``"linear"`` as an
  activation for a two-argument ``linear(x, w)``) is not taken for the model's.
"""

import os
import sys
import textwrap
import warnings

import keras
import pytest
from keras import layers, ops

from dkm_tf.cli_custom import custom_code
from dkm_tf.core.custom_code import import_custom_code
from dkm_tf.pipeline_metrics import binary_threshold
from dkm_tf.training.common import default_loss, output_activation


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize("tail", ["cast", "reshape", "clip", "dropout", "flatten"])
def test_an_op_keeping_the_values_does_not_hide_the_final_softmax(tail):
    i = keras.Input((4,))
    p = layers.Dense(10, activation="softmax")(i)
    out = {"cast": lambda: ops.cast(p, "float32"), "reshape": lambda: ops.reshape(p, (-1, 10)),
           "clip": lambda: ops.clip(p, 1e-7, 1 - 1e-7), "dropout": lambda: layers.Dropout(0.1)(p),
           "flatten": lambda: layers.Flatten()(p)}[tail]()
    m = keras.Model(i, out)
    assert output_activation(m) == "softmax"
    assert default_loss(m).get_config()["from_logits"] is False


def test_a_cast_after_a_sigmoid_keeps_the_half_threshold_and_a_log_is_no_softmax():
    i = keras.Input((4,))
    m = keras.Model(i, ops.cast(layers.Dense(1, activation="sigmoid")(i), "float32"))
    assert binary_threshold(m) == 0.5
    m = keras.Model(i, ops.log(layers.Dense(10, activation="softmax")(i)))  # log-probabilities
    assert output_activation(m) == ""


def test_a_user_class_an_h5_file_names_like_a_keras_one_is_refused(tmp_path, clean_modules):
    user = _write(tmp_path / "u" / "userln22b.py", """
        import keras
        class LayerNormalization(keras.layers.LayerNormalization):
            def call(self, x):
                return super().call(x) + 1.0
    """)
    sys.path.insert(0, str(tmp_path / "u"))
    import userln22b  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    i = keras.Input((5,))
    model = keras.Model(i, userln22b.LayerNormalization()(layers.Dense(4)(i)))
    path = str(tmp_path / "ln.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 is a legacy format"
        model.save(path)
    with pytest.raises(ValueError, match=r"LayerNormalization.*Keras has too.*\.h5.*"
                                         r"re-save the model as \.keras"):
        import_custom_code(user, path=path)
    assert "LayerNormalization" not in import_custom_code(user)  # no file: built-ins kept


def test_a_helper_in_two_files_is_refused_only_where_the_model_names_it(tmp_path,
                                                                       clean_modules):
    a = _write(tmp_path / "a" / "helpers_a22b.py", """
        def main():
            return 1
        def swish2(x):
            return x
    """)
    b = _write(tmp_path / "b" / "helpers_b22b.py", """
        def main():
            return 2
        def swish2(x):
            return x * 2
    """)
    keras.utils.set_random_seed(0)
    i = keras.Input((3,))
    model = keras.Model(i, layers.Dense(2, name="fc")(i))
    path = str(tmp_path / "m.keras")
    model.save(path)
    objects = import_custom_code(f"{a},{b}", path=path)  # the model names neither
    assert "main" not in objects and "swish2" not in objects
    with custom_code(f"{a},{b}", model_path=path):
        pass
    model = keras.Model(i, layers.Dense(2, name="swish2")(i))  # a layer's name: no object
    model.save(path)
    assert "swish2" not in import_custom_code(f"{a},{b}", path=path)
    sys.path.insert(0, str(tmp_path / "a"))
    import helpers_a22b  # noqa: PLC0415

    model = keras.Model(i, layers.Dense(2, activation=helpers_a22b.swish2)(i))  # it is used
    model.save(path)
    with pytest.raises(ValueError, match=r"defines 'swish2', which .*helpers_a22b"):
        import_custom_code(f"{a},{b}", path=path)
    assert os.path.exists(path)


def test_a_two_argument_helper_named_like_an_activation_is_no_clash(tmp_path, clean_modules):
    # review: `def linear(x, w)` beside a Dense with activation "linear" in an .h5 was refused
    user = _write(tmp_path / "u" / "mylinear22b.py", """
        import keras
        def linear(x, w):
            return x @ w
        class Scale22b(keras.layers.Layer):
            def call(self, x):
                return x * 2.0
    """)
    keras.utils.set_random_seed(0)
    i = keras.Input((3,))
    model = keras.Model(i, layers.Dense(2, activation="linear")(i))
    path = str(tmp_path / "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 is a legacy format"
        model.save(path)
    assert set(import_custom_code(user, path=path)) == {"Scale22b"}
