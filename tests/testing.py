"""Shared test helpers."""

import functools

import numpy as np


def backend():
    """The Keras backend this test process runs on ("tensorflow", "jax", "torch")."""
    import keras

    return keras.backend.backend()


def to_numpy(x):
    """A numpy array of a tensor or Keras variable of any backend (``.numpy()`` is TF only)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def gradients(fn, sources):
    """``d fn() / d source`` for each of ``sources`` (Keras variables), as numpy arrays.

    ``fn`` takes no argument and returns a scalar computed from the variables. TensorFlow: a
    ``GradientTape``; JAX: ``jax.grad`` of ``fn`` run in a ``keras.StatelessScope`` that maps
    each variable to the traced value (what Keras' own JAX trainer does). A source that does
    not reach the result gives None (TensorFlow) or zeros (JAX).
    """
    import keras

    if backend() == "jax":
        import jax

        def f(values):
            with keras.StatelessScope(state_mapping=list(zip(sources, values))):
                return fn()

        return [np.asarray(g) for g in jax.grad(f)([v.value for v in sources])]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = fn()
    return [None if g is None else np.asarray(tf.convert_to_tensor(g))
            for g in tape.gradient(loss, sources)]


def tf_backend_only(reason="dkm_tf.export traces the model with TensorFlow"):
    """Skip marker for tests of TensorFlow-only features when the suite runs on JAX / torch."""
    import pytest

    return pytest.mark.skipif(backend() != "tensorflow",
                              reason=f"needs the TensorFlow backend: {reason}")


def assert_all_close(actual, desired, atol=1e-6, rtol=1e-6, msg=""):
    """``np.testing.assert_allclose`` that accepts tensors."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), atol=atol, rtol=rtol,
                               err_msg=msg)


def small_cnn(seed=0, input_shape=(8, 8, 1)):
    """A tiny conv + dense classifier with a BatchNormalization layer (not clusterable)."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        L.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        L.BatchNormalization(name="bn"),
        L.DepthwiseConv2D(3, padding="same", name="dw"),
        L.Flatten(name="flat"),
        L.Dense(10, name="out"),
    ], name="small_cnn")


def subclassed_model(units=2, inputs=3):
    """A subclassed model (one Dense layer of ``units``): Keras cannot clone or trace it
    generically. Built on ``inputs`` features; ``inputs=None`` leaves it unbuilt (no
    ``output_shape`` before it runs)."""
    import keras

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(units)

        def call(self, x):
            return self.d(x)

    m = Sub()
    if inputs is not None:
        m(np.zeros((1, inputs), np.float32))
    return m


def tflite_interpreter(path, kind="litert"):
    """An allocated interpreter for a .tflite file: ``"litert"`` (ai_edge_litert) or
    ``"tflite"`` (tf.lite)."""
    import warnings

    if kind == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def run_tflite_per_sample(path, x, kind="litert"):
    """Outputs of a single-input, single-output .tflite, one sample at a time."""
    it = tflite_interpreter(path, kind)
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    ys = []
    for s in x:
        it.set_tensor(i, s[None])
        it.invoke()
        ys.append(it.get_tensor(o)[0].copy())
    return np.stack(ys)


def run_tflite_batch(content, x):
    """Outputs of a single-input, single-output .tflite (bytes) on the whole batch ``x`` in one
    invoke (LiteRT, the input resized to ``x.shape``)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(content))
    i = it.get_input_details()[0]["index"]
    it.resize_tensor_input(i, x.shape)
    it.allocate_tensors()
    it.set_tensor(i, x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def conv_conv_dense(filters, names, head="fc", seed=None, name=None):
    """Conv(filters[0]) - Conv(filters[1]) - Dense(10) on 8x8x1 (3x3 valid convs, relu), the
    layers named ``names`` and ``head``; Keras' initial weights after ``seed`` (if given)."""
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    y = L.Conv2D(filters[0], 3, activation="relu", name=names[0])(inp)
    y = L.Conv2D(filters[1], 3, activation="relu", name=names[1])(y)
    return keras.Model(inp, L.Dense(10, name=head)(L.Flatten()(y)), name=name)


def two_conv_model():
    """Conv(4) - Conv(4) - Dense(10) on 8x8x1 with fixed normal(0, 0.3) weights (seed 1)."""
    model = conv_conv_dense((4, 4), ("conv", "conv2"), head="out")
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def layer_stack(layers, name):
    """A subclassed model (it declares no input) calling ``layers`` in turn."""
    import keras

    class LayerStack(keras.Model):
        def __init__(self):
            super().__init__(name=name)
            self.stack = layers

        def call(self, x):
            for layer in self.stack:
                x = layer(x)
            return x

    return LayerStack()


def interrupt_at(epoch):
    """A callback that raises KeyboardInterrupt at the start of ``epoch`` (an interrupted fit,
    for BackupAndRestore / checkpoint resume tests)."""
    import keras

    class InterruptAt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise KeyboardInterrupt

    return InterruptAt()


def dense_classifier(units=3, loss=None):
    """Input(4) -> Dense(8, "hidden") -> Dense(units, "out"), seed 0, compiled with ``loss``
    if one is given (the label-check tests' model)."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), name="inp")
    model = keras.Model(inp, keras.layers.Dense(units, name="out")(
        keras.layers.Dense(8, name="hidden")(inp)))
    if loss is not None:
        model.compile(loss=loss)
    return model


@functools.cache
def holds_a_wrapper():
    """A custom layer class holding a ``ClusterWeights(Dense(4), n_clusters=3)``: inside a
    Functional model it is built in a traced pass, so its k-means waits for the first eager
    call. Registered (package ``dkm_tf_tests``) so ``.keras`` files of it load."""
    import keras

    import dkm_tf

    @keras.saving.register_keras_serializable(package="dkm_tf_tests")
    class HoldsAWrapper(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = dkm_tf.ClusterWeights(keras.layers.Dense(4), n_clusters=3)

        def call(self, x):
            return self.inner(x)

    return HoldsAWrapper


def two_conv_bn_blocks():
    """Layers of one name in two nested models: Sequential blocks ``a`` and ``b`` (a ReLU
    between), each a linear ``conv`` (4 -> 4 channels, 5x5 inputs) + ``bn`` with its own
    random statistics (seeds 1 and 2)."""
    import keras

    def block(name, seed):
        rng = np.random.default_rng(seed)
        out = keras.Sequential([
            keras.Input((5, 5, 4)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
            keras.layers.BatchNormalization(name="bn")], name=name)
        bn = out.layers[1]
        for var, lo, hi in ((bn.gamma, 0.3, 3.0), (bn.moving_variance, 0.2, 2.0)):
            var.assign(rng.uniform(lo, hi, 4).astype("float32"))
        bn.beta.assign(rng.normal(size=4).astype("float32"))
        bn.moving_mean.assign(rng.normal(size=4).astype("float32"))
        return out

    inp = keras.Input((5, 5, 4))
    return keras.Model(inp, block("b", 2)(keras.layers.ReLU()(block("a", 1)(inp))))

