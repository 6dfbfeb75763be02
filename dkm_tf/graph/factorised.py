"""``FactorisedConv2D``: a conv whose kernels share a small codebook, run conv-then-add.

Son et al. (ECCV 2018, methods.md §2.4, §2.6): with ``W[:, :, i, j] = s[i, j] * mu[l[i, j]]``
(``mu``: codebook (K, kh, kw), ``l``: indices (cin, cout), ``s``: scales (cin, cout)),

    z[i, n] = mu[n] * x_i                      (each input channel with its distinct centroids)
    y_j     = sum_i s[i, j] * z[i, l[i, j]] + b_j

The layer stores the codebook, the scales, a per-input table of its distinct centroids
``slot_centroids`` (cin, U) (``U = max_i U_i``; short rows repeat their last centroid) and
``slots`` (cin, cout), the position of ``l[i, j]`` in row i's table. The centroid
convolutions are one depthwise conv with channel multiplier U (kernel gathered from the
codebook, so the codebook stays one trainable tensor); the scaled accumulation is either

* ``mixing="dense"`` (default): a 1x1 conv with the ``(cin*U, cout)`` matrix
  ``M[i*U + slots[i, j], j] = s[i, j]`` (zeros elsewhere). TFLite: DEPTHWISE_CONV_2D + CONV_2D,
  both constant-folded from the stored factors and run by XNNPACK; it computes
  ``cin*U*cout`` MACs per position instead of ``cin*cout``; or
* ``mixing="gather"``: GATHER of the ``cin*cout`` needed channels, MUL by the scales, SUM
  over the inputs: the theoretical ``cin*cout`` MACs and a smaller file, but the gathered
  ``Ho*Wo*cin*cout`` tensor makes it far slower in practice.

``dense`` is the default because it is the faster of the two in LiteRT (bench/factorised_conv.py,
56x56x64 -> 64, 3x3: 2.8-3.0x the plain conv's time at K=16 and 5.6-9.5x at K=64/256, against
18-31x for ``gather``); ``gather`` gives the smaller file (0.5x the plain conv at K=16, where
``dense`` is 2x). Neither is faster than the XNNPACK float conv on CPU: the paper claims
theoretical FLOPs only. The mixing matrix is built from an identity by a gather (not
``one_hot``), which the converter folds into a constant; with ``one_hot`` it stayed a run-time
computation and the 1x1 conv got a dynamic kernel (measured 7-26x slower).

``form="add_then_conv"`` runs the other factorisation of §2.6 instead,

    u[j, n] = sum_{i: l[i, j] = n} s[i, j] x_i     (inputs that share a centroid, summed)
    y_j     = sum_n mu[n] * u[j, n] + b_j

as a 1x1 conv to ``cout*V`` channels (``V = max_j U_j``, the distinct centroids of an output;
``slot_centroids`` is then (cout, V) and ``slots[i, j]`` the position of ``l[i, j]`` in row
j's table), one depthwise conv with the gathered centroids, and a sum over the V slots. It is
cheaper when outputs use fewer distinct centroids than inputs do (``KernelFlops.best``).

Channels-last, dilation 1, no transforms (transform-invariant indices are refused by
:func:`~dkm_tf.graph.factorise.factorise_convs`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dkm_tf.core.kernel_flops import MIXINGS, conv_output_hw, kernel_flops
from dkm_tf.core.validate import check_choice, check_hw, invalid, invalid_type

FORMS = ("conv_then_add", "add_then_conv")

__all__ = ["FactorisedConv2D", "check_factors", "slot_tables"]


def check_factors(codebook, indices, scales, bias=None):
    """Validate the factors of one layer; return them as float32 / int32 numpy arrays.

    Raises:
        ValueError: wrong ranks or shapes, non-finite values, indices outside ``[0, K)``.
        TypeError: non-integer indices.
    """
    cb = np.asarray(codebook)
    if cb.ndim != 3 or cb.size == 0 or cb.dtype.kind not in "fiu":
        raise invalid("codebook", "a non-empty real array of shape (K, kh, kw)",
                      f"array of shape {cb.shape} and dtype {cb.dtype}")
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise invalid_type("indices", "an integer array of shape (cin, cout)", idx)
    if idx.ndim != 2 or idx.size == 0:
        raise invalid("indices", "a non-empty 2-D array of shape (cin, cout)",
                      f"array of shape {idx.shape}")
    k = cb.shape[0]
    if idx.min() < 0 or idx.max() >= k:
        raise invalid("indices", f"centroid ids in [0, {k}) (K={k} from codebook.shape[0])",
                      f"ids in [{int(idx.min())}, {int(idx.max())}]")
    sc = np.asarray(scales)
    if sc.shape != idx.shape or sc.dtype.kind not in "fiu":
        raise invalid("scales", f"a real array of the indices' shape {idx.shape}",
                      f"array of shape {sc.shape} and dtype {sc.dtype}")
    for name, arr in (("codebook", cb), ("scales", sc)):
        if not np.all(np.isfinite(arr)):
            raise invalid(name, "finite values", f"{int(np.sum(~np.isfinite(arr)))} non-finite")
    out = [cb.astype(np.float32), idx.astype(np.int32), sc.astype(np.float32)]
    if bias is not None:
        b = np.asarray(bias)
        if b.shape != (idx.shape[1],) or not np.all(np.isfinite(b)):
            raise invalid("bias", f"None or finite values of shape ({idx.shape[1]},)",
                          f"array of shape {b.shape}")
        b = b.astype(np.float32)
    return (*out, None if bias is None else b)


def slot_tables(indices):
    """``(slot_centroids (cin, U), slots (cin, cout))`` with
    ``slot_centroids[i, slots[i, j]] == indices[i, j]`` and ``U = max_i U_i``."""
    idx = np.asarray(indices)
    rows = [np.unique(r) for r in idx]
    mult = max(len(r) for r in rows)
    table = np.stack([np.pad(r, (0, mult - len(r)), mode="edge") for r in rows])
    slots = np.stack([np.searchsorted(r, row) for r, row in zip(rows, idx)])
    return table.astype(np.int32), slots.astype(np.int32)


@keras.saving.register_keras_serializable(package="dkm_tf")
class FactorisedConv2D(keras.layers.Layer):
    """Conv2D with codebook-shared kernels computed conv-then-add (Son et al. §2.6).

    Build it with :meth:`from_factors`; the constructor only takes the configuration (what
    ``get_config`` stores; the factors are weights).

    Args:
        filters: output channels (cout).
        kernel_size: ``(kh, kw)``.
        n_centroids: K, the codebook size.
        channel_multiplier: U, distinct centroids per input channel at most.
        input_channels: cin.
        strides: conv strides.
        padding: ``"valid"`` or ``"same"``.
        activation: Keras activation.
        use_bias: add a bias.
        mixing: ``"dense"`` (1x1 conv) or ``"gather"``; see the module docstring.
        form: ``"conv_then_add"`` (default) or ``"add_then_conv"`` (then U is V, the
            distinct centroids per output, and mixing must be ``"dense"``).
        data_format: only ``"channels_last"`` (or None).
        dilation_rate: only 1.
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``, ...).
    """

    def __init__(self, filters, kernel_size, n_centroids, channel_multiplier, input_channels,
                 strides=(1, 1), padding="valid", activation=None, use_bias=True,
                 mixing="dense", data_format=None, dilation_rate=(1, 1),
                 form="conv_then_add", **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise invalid("data_format", "'channels_last' (FactorisedConv2D runs channels-last "
                          "only)", data_format)
        if check_hw("dilation_rate", dilation_rate) != (1, 1):
            raise invalid("dilation_rate", "1 (FactorisedConv2D supports no dilation)",
                          dilation_rate)
        for name, value in (("filters", filters), ("n_centroids", n_centroids),
                            ("channel_multiplier", channel_multiplier),
                            ("input_channels", input_channels)):
            check_hw(name, value)
        if channel_multiplier > n_centroids:
            raise invalid("channel_multiplier", f"at most n_centroids={n_centroids}",
                          channel_multiplier)
        self.filters, self.n_centroids = int(filters), int(n_centroids)
        self.channel_multiplier, self.input_channels = int(channel_multiplier), int(
            input_channels)
        self.kernel_size = check_hw("kernel_size", kernel_size)
        self.strides = check_hw("strides", strides)
        self.padding = check_choice("padding", str(padding).lower(), ("valid", "same"))
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.mixing = check_choice("mixing", mixing, MIXINGS)
        self.form = check_choice("form", form, FORMS)
        if self.form == "add_then_conv" and self.mixing != "dense":
            raise invalid("mixing", "'dense' with form='add_then_conv'", mixing)
        self._pending = None

    @classmethod
    def from_factors(cls, codebook, indices, scales, bias=None, *, strides=1, padding="valid",
                     activation=None, use_bias=None, mixing="dense", data_format=None,
                     form="conv_then_add", **kwargs):
        """A layer computing ``conv(x, W) + bias`` with ``W[:, :, i, j] = scales[i, j] *
        codebook[indices[i, j]]``.

        Args:
            codebook: (K, kh, kw) centroids.
            indices: int (cin, cout) centroid ids in ``[0, K)``.
            scales: (cin, cout) per-kernel scales.
            bias: (cout,) or None.
            use_bias: default: ``bias is not None`` (a bias of zeros if True without one).
            strides, padding, activation, mixing, data_format, form, **kwargs: as the
                constructor.
        """
        cb, idx, sc, b = check_factors(codebook, indices, scales, bias)
        if use_bias is None:
            use_bias = b is not None
        if not use_bias and b is not None:
            raise invalid("bias", "None when use_bias=False", "an array")
        check_choice("form", form, FORMS)
        if form == "add_then_conv":  # tables per output channel
            table, slots = slot_tables(idx.T)
            slots = np.ascontiguousarray(slots.T)
        else:
            table, slots = slot_tables(idx)
        layer = cls(filters=idx.shape[1], kernel_size=cb.shape[1:], n_centroids=cb.shape[0],
                    channel_multiplier=table.shape[1], input_channels=idx.shape[0],
                    strides=strides, padding=padding, activation=activation,
                    use_bias=use_bias, mixing=mixing, data_format=data_format, form=form,
                    **kwargs)
        layer._pending = {"codebook": cb, "scales": sc, "slot_centroids": table,
                          "slots": slots, "bias": np.zeros(idx.shape[1], np.float32)
                          if b is None else b}
        return layer

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] != self.input_channels:
            raise ValueError(f"FactorisedConv2D {self.name!r} expects a 4-D channels-last input "
                             f"with {self.input_channels} channels. Received input shape "
                             f"{tuple(input_shape)}")
        cin, cout, k, u = self.input_channels, self.filters, self.n_centroids, \
            self.channel_multiplier
        kh, kw = self.kernel_size
        self.codebook = self.add_weight(name="codebook", shape=(k, kh, kw),
                                        initializer="glorot_uniform")
        self.scales = self.add_weight(name="scales", shape=(cin, cout), initializer="ones")
        rows = cout if self.form == "add_then_conv" else cin
        self.slot_centroids = self.add_weight(name="slot_centroids", shape=(rows, u),
                                              initializer="zeros", dtype="int32",
                                              trainable=False)
        self.slots = self.add_weight(name="slots", shape=(cin, cout), initializer="zeros",
                                     dtype="int32", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(cout,), initializer="zeros") \
            if self.use_bias else None
        if self._pending is not None:
            for name, value in self._pending.items():
                if getattr(self, name, None) is not None:
                    getattr(self, name).assign(value)
            self._pending = None

    def call(self, inputs):
        cin, cout, u = self.input_channels, self.filters, self.channel_multiplier
        if self.form == "add_then_conv":
            y = self._add_then_conv(inputs, cin, cout, u)
            if self.bias is not None:
                y = y + self.bias
            return self.activation(y) if self.activation is not None else y
        dk = ops.take(self.codebook, self.slot_centroids, axis=0)        # (cin, U, kh, kw)
        dk = ops.transpose(dk, (2, 3, 0, 1))                              # (kh, kw, cin, U)
        z = ops.depthwise_conv(inputs, dk, strides=self.strides, padding=self.padding)
        if self.mixing == "dense":
            # one_hot as a gather from an identity: the TFLite converter folds gathers of
            # constants (one_hot it keeps, and the 1x1 conv would get a run-time kernel)
            eye = ops.eye(u, dtype=self.compute_dtype)
            m = ops.take(eye, self.slots, axis=0) * ops.expand_dims(
                ops.cast(self.scales, self.compute_dtype), -1)           # (cin, cout, U)
            m = ops.reshape(ops.transpose(m, (0, 2, 1)), (1, 1, cin * u, cout))
            y = ops.conv(z, m, strides=1, padding="valid")
        else:
            pos = ops.expand_dims(ops.arange(cin, dtype="int32") * u, 1) + self.slots
            g = ops.take(z, ops.reshape(pos, (-1,)), axis=-1)            # (B, Ho, Wo, cin*cout)
            shape = ops.shape(z)
            g = ops.reshape(g, (shape[0], shape[1], shape[2], cin, cout))
            y = ops.sum(g * ops.cast(self.scales, self.compute_dtype), axis=-2)
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y

    def _add_then_conv(self, inputs, cin, cout, v):
        """1x1 conv to the (output, slot) sums, depthwise conv with their centroids, sum."""
        eye = ops.eye(v, dtype=self.compute_dtype)
        m = ops.take(eye, self.slots, axis=0) * ops.expand_dims(
            ops.cast(self.scales, self.compute_dtype), -1)               # (cin, cout, V)
        u = ops.conv(inputs, ops.reshape(m, (1, 1, cin, cout * v)), strides=1,
                     padding="valid")                                     # (B, H, W, cout*V)
        dk = ops.take(self.codebook, self.slot_centroids, axis=0)        # (cout, V, kh, kw)
        kh, kw = self.kernel_size
        dk = ops.reshape(ops.transpose(dk, (2, 3, 0, 1)), (kh, kw, cout * v, 1))
        z = ops.depthwise_conv(u, dk, strides=self.strides, padding=self.padding)
        shape = ops.shape(z)
        return ops.sum(ops.reshape(z, (shape[0], shape[1], shape[2], cout, v)), axis=-1)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1:3]
        if h is None or w is None:
            oh = ow = None
            if h is not None or w is not None:
                known = conv_output_hw((h or w, h or w), self.kernel_size, self.strides,
                                       self.padding)[0]
                oh, ow = (known, None) if h is not None else (None, known)
        else:
            oh, ow = conv_output_hw((h, w), self.kernel_size, self.strides, self.padding)
        return (input_shape[0], oh, ow, self.filters)

    # -- the factors back as numpy --------------------------------------------------------
    @property
    def indices(self):
        """Centroid ids (cin, cout), ``slot_centroids[i, slots[i, j]]``."""
        table = ops.convert_to_numpy(self.slot_centroids)
        slots = ops.convert_to_numpy(self.slots)
        if self.form == "add_then_conv":  # table per output: (cout, V)
            return np.take_along_axis(table, slots.T, axis=1).T
        return np.take_along_axis(table, slots, axis=1)

    def decoded_kernel(self):
        """The plain conv kernel (kh, kw, cin, cout) these factors stand for."""
        cb, sc = ops.convert_to_numpy(self.codebook), ops.convert_to_numpy(self.scales)
        return (cb[self.indices] * sc[..., None, None]).transpose(2, 3, 0, 1)

    def flops(self, in_hw):
        """:class:`~dkm_tf.core.kernel_flops.KernelFlops` of this layer on ``in_hw`` inputs."""
        return kernel_flops(self.indices, in_hw=in_hw, kernel=self.kernel_size,
                            strides=self.strides, padding=self.padding)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      n_centroids=self.n_centroids, channel_multiplier=self.channel_multiplier,
                      input_channels=self.input_channels, strides=self.strides,
                      padding=self.padding,
                      activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias, mixing=self.mixing,
                      data_format="channels_last", dilation_rate=(1, 1), form=self.form)
        return config
