"""The layers of kernel clustering (Son, Nah, Lee, ECCV 2018): :class:`KernelCodebook` and
:class:`ClusterKernels` (see :mod:`dkm_tf.training.kernel_clustering` for the method and the
model-level functions; both classes are importable from there too).

Under a mixed precision policy the kernel ``s T_t(mu)`` is formed in float32 (the variables'
dtype, as :meth:`dkm_tf.core.palette.Palette.decode` forms it) and the wrapped conv casts it
as a plain conv casts its float32 kernel, so the clustered model computes exactly what its
stripped copy computes.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.graph import kernel_share
from dkm_tf.training import wrapper_extras as extras
from dkm_tf.training import wrapper_names

__all__ = ["ClusterKernels", "KernelCodebook"]


@keras.saving.register_keras_serializable(package="dkm_tf")
class KernelCodebook(keras.layers.Layer):
    """Owns one shared kernel codebook (K, kh, kw); ``call(x)`` returns it (x is ignored).

    Args:
        n_clusters: K.
        kernel_size: (kh, kw).
        codebook_id: the group id (``"kernel:3x3"``, ``"kernel:group0"``, ...).
        frozen_with_users: True when this codebook was frozen because every conv reading it
            is (see :meth:`follow_users`): it is unfrozen again when one of them is.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, n_clusters, kernel_size, codebook_id="", frozen_with_users=False,
                 **kwargs):
        kwargs.setdefault("autocast", False)  # mixed_float16: the float32 codebook, not
        super().__init__(**kwargs)  # a float16 copy (rounded before the gather)
        self._frozen_with_users = bool(frozen_with_users)  # see follow_users
        self.n_clusters = int(n_clusters)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.codebook_id = str(codebook_id)
        self.codebook = self.add_weight(name="codebook", shape=(self.n_clusters,
                                                                *self.kernel_size),
                                        initializer="zeros", trainable=True,
                                        autocast=False)  # also inside a model's scope

    def build(self, input_shape=None):
        self.built = True

    def users(self):
        """The :class:`ClusterKernels` reading this codebook in the models built so far."""
        out = []
        for node in getattr(self, "_outbound_nodes", ()):
            if isinstance(node.operation, ClusterKernels) and node.operation not in out:
                out.append(node.operation)
        return out

    def follow_users(self):
        """Freeze this codebook when every conv reading it is frozen (it only got zero
        gradients then, yet an optimizer's weight decay moved it: 0.0081 under JAX + AdamW),
        and unfreeze it again when one of them is unfrozen, if it was frozen that way (here
        or by ``cluster_weights`` for a group of frozen convs), not by you."""
        users = self.users()
        if not users:
            return
        if self.trainable and not any(u.trainable for u in users):
            self.trainable, self._frozen_with_users = False, True
        elif any(u.trainable for u in users) and self._frozen_with_users:
            self.trainable, self._frozen_with_users = True, False

    def call(self, inputs):
        if self.trainable:
            self._warn_frozen_users()
        return ops.convert_to_tensor(self.codebook)

    def _warn_frozen_users(self):
        frozen = [u.name for u in self.users() if not u.trainable]
        if frozen and frozen != getattr(self, "_warned_frozen", None):
            self._warned_frozen = frozen
            live = [u.name for u in self.users() if u.trainable]
            warnings.warn(
                f"Kernel codebook {self.name!r} ({self.codebook_id}) is trainable, but the "
                f"frozen {frozen} read it (with trainable {live}): training it changes the "
                "frozen convs' kernels too. Freeze the codebook layer as well "
                f"(model.get_layer({self.name!r}).trainable = False; the trainable convs then "
                "train only their scales), or cluster the frozen convs in their own group "
                "(cluster_weights(..., unit='kernel', codebook=[[frozen convs], [others]]) on "
                "the float model).", UserWarning, stacklevel=2)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((self.n_clusters, *self.kernel_size), dtype=self.codebook.dtype)

    def get_config(self):
        config = {**super().get_config(), "n_clusters": self.n_clusters,
                  "kernel_size": list(self.kernel_size), "codebook_id": self.codebook_id}
        if self._frozen_with_users:  # written only when set: loads in older dkm_tf
            config["frozen_with_users"] = True
        return config


def _transform(x, t):
    """:func:`dkm_tf.core.kernel_codebook.apply_transform` with keras ops on (K, kh, kw)."""
    y = ops.flip(x, axis=2) if t & 1 else x
    y = ops.flip(y, axis=1) if t & 2 else y
    return ops.flip(ops.transpose(y, (0, 2, 1)), axis=1) if t & 4 else y


@keras.saving.register_keras_serializable(package="dkm_tf")
class ClusterKernels(extras.KeepsReplacedFrozen, keras.layers.Wrapper):
    """A Conv2D whose kernel is ``s T_t(codebook[l])`` with the codebook given as an input.

    Called as ``wrapper(x, codebook=cb)`` with ``cb`` the output of its group's
    :class:`KernelCodebook`. Variables: ``scales`` (cin, cout) trainable, ``indices`` and
    ``transform_ids`` (cin, cout) int32 frozen, ``scale_step`` (int8 step of
    ``scale_bits=8``) frozen. The wrapped conv's own kernel no longer feeds the output
    (non-trainable, also when the wrapper is unfrozen; its regularizer applies to the shared
    kernel); its bias and everything else train. No attribute of the wrapped layer is
    written: its own ``call`` runs in a :class:`keras.StatelessScope` mapping its kernel to
    the shared one (as :class:`dkm_tf.ClusterWeights` does).

    Args:
        layer: the k x k Conv2D to wrap (built at the wrapper's build if it is not).
        n_clusters: K, the entries of the group's codebook (default 16).
        transforms: T, transforms per kernel: 1, 2, 4 or 8 (flips; 8 adds 90-degree turns).
        scale_bits: a stored scale's bits: 16 (float16), 8 (int8 times ``scale_step``) or 32.
        codebook_id: the group id, that of the group's :class:`KernelCodebook`.
        **kwargs: base layer arguments (``name``: default ``"cluster_<layer name>"``).
    """

    def __init__(self, layer, n_clusters=16, transforms=1, scale_bits=16, codebook_id="",
                 **kwargs):
        kwargs.setdefault("name", wrapper_names.default_name(layer))  # unique in its model
        # mixed_float16: the kernel s T_t(mu) is formed in float32, as decode() does, and the
        # wrapped conv casts it (and its inputs) as a plain conv casts its float32 kernel;
        # autocast rounded mu and s to float16 first (one float16 step off on ~1/3 of weights)
        kwargs.setdefault("autocast", False)
        super().__init__(layer, **kwargs)
        kernel_share.check_kernel_options(transforms, scale_bits)
        self.n_clusters = int(n_clusters)
        self.transforms = int(transforms)
        self.scale_bits = int(scale_bits)
        self.codebook_id = str(codebook_id)

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):  # the conv's kernel stays frozen; its codebook follows
        extras.KeepsReplacedFrozen.trainable.fset(self, value)
        for node in getattr(self, "_inbound_nodes", ()):
            for t in node.arguments.keras_tensors:
                holder = t._keras_history.operation  # noqa: SLF001 - Keras' graph record
                if isinstance(holder, KernelCodebook):
                    holder.follow_users()

    def build(self, inputs_shape=None, codebook_shape=None):
        if not self.layer.built:
            self.layer.build(inputs_shape)
        kh, kw, cin, cout = self.layer.kernel.shape
        self.scales = self.add_weight(name="scales", shape=(cin, cout), initializer="ones",
                                      trainable=True, autocast=False)  # float32, see init
        self.indices = self.add_weight(name="indices", shape=(cin, cout), dtype="int32",
                                       initializer="zeros", trainable=False)
        self.transform_ids = self.add_weight(name="transform_ids", shape=(cin, cout),
                                             dtype="int32", initializer="zeros",
                                             trainable=False)
        self.scale_step = self.add_weight(name="scale_step", shape=(), initializer="ones",
                                          trainable=False, autocast=False)
        self.layer.kernel.trainable = False
        self.built = True

    def stored_scales(self):
        """The scales as stored (float16 / int8 step / float32), straight-through gradient."""
        s = ops.convert_to_tensor(self.scales)
        if self.scale_bits == 32:
            return s
        if self.scale_bits == 16:
            q = ops.cast(ops.cast(s, "float16"), s.dtype)
        else:
            step = ops.convert_to_tensor(self.scale_step)
            r = ops.clip(ops.round(s / step), -127.0, 127.0)
            r = ops.where(ops.logical_and(ops.equal(r, 0.0), ops.not_equal(s, 0.0)),
                          ops.sign(s), r)
            q = r * step
        return s + ops.stop_gradient(q - s)

    def shared_kernel(self, codebook):
        """The kernel (kh, kw, cin, cout) from ``codebook`` (K, kh, kw)."""
        cb = ops.convert_to_tensor(codebook)
        idx = ops.convert_to_tensor(self.indices)
        if self.transforms > 1:
            cb = ops.concatenate([_transform(cb, t) for t in range(self.transforms)], axis=0)
            idx = idx + self.n_clusters * ops.convert_to_tensor(self.transform_ids)
        k = ops.take(cb, idx, axis=0) * self.stored_scales()[:, :, None, None]
        return ops.transpose(k, (2, 3, 0, 1))

    def call(self, inputs, codebook=None, **kwargs):
        if codebook is None:
            raise ValueError(f"Layer {self.name!r} needs its shared codebook: call it as "
                             "layer(x, codebook=codebook_layer(x)).")
        extras.check_not_quantized(self)  # model.quantize reaches the wrapped conv
        if not self.trainable:  # frozen: no gradient of this layer's loss to the codebook
            codebook = ops.stop_gradient(codebook)
        kernel = self.shared_kernel(codebook)
        var = self.layer.kernel
        others = [(v, v.value) for v in self.layer.variables if v is not var]
        reg = extras.user_regularizer(var) if self.trainable else None
        if reg is not None:  # the replaced kernel is not trainable: Keras would skip it
            self.add_loss(reg(kernel))
        with keras.StatelessScope(state_mapping=[(var, kernel), *others]):
            return self.layer(inputs, **kwargs)

    def compute_output_spec(self, inputs, codebook=None, **kwargs):
        return self.layer.compute_output_spec(inputs)

    def get_config(self):
        return {**super().get_config(), "n_clusters": self.n_clusters,
                "transforms": self.transforms, "scale_bits": self.scale_bits,
                "codebook_id": self.codebook_id}

    def palette(self, codebook):
        """The :class:`~dkm_tf.core.palette.Palette` of the current state (numpy), with
        ``codebook`` (K, kh, kw): the value of the group's :class:`KernelCodebook`."""
        s = keras.ops.convert_to_numpy(self.stored_scales()).T.reshape(1, -1)
        idx = keras.ops.convert_to_numpy(self.indices).T.reshape(1, -1)
        t = keras.ops.convert_to_numpy(self.transform_ids).T.reshape(1, -1)
        cb = np.asarray(codebook, np.float32)
        lay = units_lib.layout_for(tuple(self.layer.kernel.shape), "conv", "kernel",
                                   "per_tensor")
        lost = kernel_share.scale_loss_note(  # trained scales float16 drops, int8 raises
            keras.ops.convert_to_numpy(self.scales), s, self.scale_bits,
            float(keras.ops.convert_to_numpy(self.scale_step)))
        return palette_lib.Palette(
            self.layer.name, "kernel", cb.reshape(1, cb.shape[0], -1), idx, lay,
            requested_clusters=self.n_clusters, codebook_id=self.codebook_id,
            note=f"kernel codebook {self.codebook_id} (fine-tuned)"
                 + (f"; {lost}" if lost else ""), scales=s,
            transforms=t if self.transforms > 1 else None, n_transforms=self.transforms,
            scale_bits=self.scale_bits)
