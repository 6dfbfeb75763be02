"""Energy records of `GroupNormalization` and `UnitNormalization` (Keras layers).

Both have no MACs; their element-wise arithmetic is charged as the `.tflite` reader charges
the same model's ops, per input sample with E elements, C channels and G groups (statistics
such as means and sums of squares are not priced, as everywhere):

* `GroupNormalization` (Keras' `_apply_normalization`): ``var + eps`` (G adds),
  ``inv · gamma`` (C products, with `scale`), ``-mean · inv`` (C products, G without
  `scale`), ``+ beta`` (C adds, with `center` and a non-zero beta: the converter drops a zero
  one, as for `LayerNormalization`), then ``x · inv + res`` (E products, E adds); for an
  image (4-D) or volume (5-D) input first the variance's ``x - mean`` (E adds), which the
  converter leaves a SUB there (of a 2-D / 3-D input it fuses it with the square into a
  SQUARED_DIFFERENCE, a statistic, not priced); not charged before 2026-12-06 (input
  (4, 4, 6), 3 groups: paper 3,395.8 vs the `.tflite`'s 3,977.2). With ``axis`` not the last
  one the `.tflite` reader reads the statistics' MEANs as average-pooling records
  (KNOWN_LIMITATIONS.md); they are not charged here.
* `UnitNormalization` (``x · rsqrt(max(sum x², eps))``): one "max" per normalised vector (G of
  them) and E products.

Before 2026-12-06 both were listed as "unsupported layer type" (their cost left out). Inside a
`TimeDistributed` (read at the wrapper's shape, one axis more than the layer was built for)
they are charged per step at the step's shape, T times (`keras_wrapped.step_records` cuts them
into steps); before 2026-12-07 they were read at the wrapper's shape, as an image's (a
GroupNormalization(2) over 3 steps of 5x4: G adds, not T·G, and an E-element SUB the file does
not run; Keras / file hierarchy 1.2663, paper 1.2339). Their records are `name`, `name/2`, ...
(`name#2`, ... before, the names of a second call).
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

    built = tuple((layer.get_build_config() or {}).get("input_shape") or ())
    steps = 1
    if len(built) + 1 == len(in_shape) and tuple(in_shape[2:]) == built[1:]:
        # inside a TimeDistributed (called at its wrapper's shape): per step, T steps
        steps, in_shape = int(in_shape[1]), (in_shape[0], *in_shape[2:])
    rank = len(in_shape)
    elements = math.prod(in_shape[1:])
    if cls == "UnitNormalization":
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        groups = elements // math.prod(in_shape[a % rank] for a in axes)
        parts = [("max", groups), ("mul", elements)]
    else:
        channels, groups = int(in_shape[layer.axis % rank]), int(layer.groups)
        # x - mean of the variance: fused with the square (SQUARED_DIFFERENCE, a statistic)
        # in the .tflite of a 2-D / 3-D input, a SUB (E adds) of a 4-D or 5-D one
        parts = [("add", elements)] if rank >= 4 else []
        parts.append(("add", groups))
        if layer.scale:
            parts.append(("mul", channels))
        parts.append(("mul", channels if layer.scale else groups))
        if layer.center and np.any(keras.ops.convert_to_numpy(layer.beta) != 0):
            parts.append(("add", channels))
        parts += [("mul", elements), ("add", elements)]
    return [sh.eltwise_shape(f"{name}/{i + 1}" if i else name, elements=steps * n,
                             eltwise_op=op, n_inputs=2, **common)
            for i, (op, n) in enumerate(parts)], None
