"""The checks of ``share_weights(refine=...)`` made before any k-means (:func:`check_refine`),
for :mod:`dkm_tf.graph.refine`."""

from __future__ import annotations

import numpy as np

from dkm_tf.core.validate import check_finite_samples, invalid
from dkm_tf.graph import calibration

__all__ = ["REFINES", "check_refine"]

REFINES = (None, "outputs", "gptq")


def check_refine(model, refine, data, inplace, sparse):
    """Validate ``refine`` eagerly; return the calibration inputs ``x`` (or None).

    One sample is run through ``model``, so inputs that do not fit it fail here, before any
    k-means. ``(x, y, sample_weight)`` is refused: the fit weighs every sample equally.
    """
    if refine not in REFINES:
        raise invalid("refine", f"one of {REFINES}", refine)
    if refine is None:
        return None
    if inplace:
        raise invalid("refine", "None with inplace=True (the update compares the clustered "
                      "layers' outputs with the float model's)", refine)
    if sparse:
        raise invalid("refine", "None with sparsity or preserve_sparsity (the update would "
                      "move the fixed zero centroid)", refine)
    if len(getattr(model, "inputs", None) or ()) != 1:
        raise invalid("refine", "None for a model without exactly one input (the update "
                      "feeds calibration samples x, one array, through the model)", refine)
    if isinstance(data, (tuple, list)) and len(data) == 3 and (
            data[2] is None or hasattr(data[2], "shape") or np.ndim(data[2]) == 1):
        raise invalid("data", f"x or (x, y) for refine={refine!r}: its least-squares fit of "
                      "the layer outputs weighs every calibration sample equally and takes no "
                      "sample weights (weighting='fisher' alone takes (x, y, sample_weight); "
                      "to weigh samples in the fit, repeat them)", "a sequence of 3, as (x, "
                      "y, sample_weight)")
    x = data[0] if isinstance(data, (tuple, list)) and len(data) == 2 else data
    if isinstance(x, (tuple, list)) and len(x) == 1:  # [x] / ([x], y): the one input's array
        x = x[0]
    if x is None or getattr(x, "shape", None) is None or len(x.shape) < 1 or len(x) < 1:
        raise invalid("data", "calibration samples x (an array with a leading sample axis), "
                      f"or (x, y), needed by refine={refine!r}",
                      None if x is None else type(x).__name__)
    x = np.asarray(x)
    check_finite_samples("data", x, f"to calibrate refine={refine!r} on")
    try:
        with calibration.quiet():
            model(x[:1], training=False)
    except Exception as e:  # noqa: BLE001 (any failure of the trial sample means misfit data)
        raise ValueError(f"Invalid value for argument `data`. Expected samples x that fit model "
                         f"{model.name!r}. Received: x of shape {x.shape}; one sample failed "
                         f"with: {type(e).__name__}: {e}") from e
    return x
