"""Energy records of `GroupNormalization` and `UnitNormalization` (Keras layers).

Both have no MACs; their element-wise arithmetic is charged as the `.tflite` reader charges
the same model's ops, per input sample with E elements, C channels and G groups (statistics
such as means and sums of squares are not priced, as everywhere):

* `GroupNormalization` (Keras' `_apply_normalization`): ``var + eps`` (G adds),
  ``inv · gamma`` (C products, with `scale`), ``-mean · inv`` (C products, G without
  `scale`), ``+ beta`` (C adds, with `center` and a non-zero beta: the converter drops a zero
  one, as for `LayerNormalization`), then ``x · inv + res`` (E products, E adds). The
  `.tflite` of an image (4-D) input also has the variance's ``x - mean`` as a SUB (E adds,
  a statistic here, not charged); of a sequence (3-D) input it has not.
* `UnitNormalization` (``x · rsqrt(max(sum x², eps))``): one "max" per normalised vector (G of
  them) and E products.

Before 2026-12-06 both were listed as "unsupported layer type" (their cost left out).
"""

import math


def norm_records(layer, name, in_shape, common):
    """``(records, None)`` for a GroupNormalization / UnitNormalization call, else None."""
    cls = type(layer).__name__
    if cls not in ("GroupNormalization", "UnitNormalization"):
        return None
    import keras
    import numpy as np

    from dkm_tf.energy import shapes as sh

    rank = len(in_shape)
    elements = math.prod(in_shape[1:])
    if cls == "UnitNormalization":
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        groups = elements // math.prod(in_shape[a % rank] for a in axes)
        parts = [("max", groups), ("mul", elements)]
    else:
        channels, groups = int(in_shape[layer.axis % rank]), int(layer.groups)
        parts = [("add", groups)]
        if layer.scale:
            parts.append(("mul", channels))
        parts.append(("mul", channels if layer.scale else groups))
        if layer.center and np.any(keras.ops.convert_to_numpy(layer.beta) != 0):
            parts.append(("add", channels))
        parts += [("mul", elements), ("add", elements)]
    return [sh.eltwise_shape(f"{name}#{i + 1}" if i else name, elements=n, eltwise_op=op,
                             n_inputs=2, **common) for i, (op, n) in enumerate(parts)], None
