"""The kernel and bias of a layer with a BatchNormalization folded in (the arithmetic of
:mod:`dkm_tf.graph.batchnorm`): which layers fold, where their output channels sit, and the
folded copy of one layer."""

from __future__ import annotations

import keras
import numpy as np

from dkm_tf.graph.copying import _not_copied, build_like

__all__ = ["FOLDABLE", "entry", "folded_copy"]

_L = keras.layers
# (class, attribute of the kernel BN folds into, where the output channels sit in it)
FOLDABLE = (
    (_L.SeparableConv1D, "pointwise_kernel", "last"),
    (_L.SeparableConv2D, "pointwise_kernel", "last"),
    (_L.DepthwiseConv1D, "kernel", "depthwise"),
    (_L.DepthwiseConv2D, "kernel", "depthwise"),
    (_L.Conv1DTranspose, "kernel", "transpose"),
    (_L.Conv2DTranspose, "kernel", "transpose"),
    (_L.Conv3DTranspose, "kernel", "transpose"),
    (_L.Conv1D, "kernel", "last"),
    (_L.Conv2D, "kernel", "last"),
    (_L.Conv3D, "kernel", "last"),
    (_L.Dense, "kernel", "last"),
)


def entry(layer):
    """``(class, kernel attribute, channel layout)`` of the FOLDABLE entry of ``layer``."""
    for cls, attr, where in FOLDABLE:
        if isinstance(layer, cls):
            return cls, attr, where
    return None


def _multiplier(layer, attr, s):
    """``s`` laid out so that ``kernel * multiplier`` scales each output channel."""
    shape = tuple(getattr(layer, attr).shape)
    where = entry(layer)[2]
    if where == "last":
        return s.reshape((1,) * (len(shape) - 1) + (-1,))
    if where == "transpose":  # (*k, out, in)
        return s.reshape((1,) * (len(shape) - 2) + (-1, 1))
    return s.reshape((1,) * (len(shape) - 2) + shape[-2:])  # depthwise (*k, in, mult)


def folded_copy(layer, bn, scales, path=None, prefix=""):
    """A copy of ``layer`` with ``bn`` folded into its kernel and (possibly new) bias; its
    kernel multiplier is put in ``scales`` under ``"{path}/{prefix}{attribute}"`` (``path``:
    the layer's path through nested models, default its name; ``prefix``: ``"layer."`` per
    ``TimeDistributed`` around it, whose path it is)."""
    f64 = np.float64

    def value(name):
        var = getattr(bn, name)
        return None if var is None else keras.ops.convert_to_numpy(var).astype(f64)

    gamma, beta = value("gamma"), value("beta")
    mean, var = value("moving_mean"), value("moving_variance")
    s = (1.0 if gamma is None else gamma) / np.sqrt(var + f64(bn.epsilon))
    attr = entry(layer)[1]
    kernel_var = getattr(layer, attr)
    mult = _multiplier(layer, attr, s)
    scales[f"{path or layer.name}/{prefix}{attr}"] = mult
    kernel = keras.ops.convert_to_numpy(kernel_var)
    bias = keras.ops.convert_to_numpy(layer.bias).astype(f64) if layer.use_bias else 0.0
    new_bias = (bias - mean) * s + (0.0 if beta is None else beta)
    repl = {id(kernel_var): (kernel.astype(f64) * mult).astype(kernel.dtype)}
    if layer.use_bias:
        repl[id(layer.bias)] = new_bias.astype(keras.ops.convert_to_numpy(layer.bias).dtype)
    values = [repl.get(id(v), None) for v in layer.weights]
    values = [keras.ops.convert_to_numpy(w) if r is None else r
              for w, r in zip(layer.weights, values)]
    if not layer.use_bias:
        values.append(new_bias.astype(kernel.dtype))
    new = _with_bias(layer)
    build_like(new, layer, values)
    return new


def _with_bias(layer):
    """An unbuilt copy of ``layer`` with ``use_bias=True``, through
    :func:`~dkm_tf.graph.own_config.from_own_config`: ``type(layer).from_config`` raised a raw
    Keras TypeError for a conv with an unregistered regularizer or constraint."""
    from dkm_tf.graph.own_config import from_own_config  # noqa: PLC0415

    get_config = layer.get_config
    object.__setattr__(layer, "get_config", lambda: {**get_config(), "use_bias": True})
    try:
        return from_own_config(layer)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise _not_copied(layer, e) from e
    finally:
        layer.__dict__.pop("get_config", None)
