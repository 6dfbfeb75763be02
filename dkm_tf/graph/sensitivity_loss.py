"""The loss of ``weighting="fisher"``: resolved, and checked to be the model's cross-entropy.

The true Fisher (``labels="model"``, :mod:`.sensitivity`) reads the model's class
probabilities off its loss, ``p(c | x) = exp(-L(c, f(x)))``: :func:`class_targets` finds the
C targets ``t_c`` (sparse ``[c]`` or one-hot) for which that holds, checking ``sum_c p(c | x)
= 1`` to :func:`sum_tolerance`. Mixed-precision (float16 / bfloat16) outputs are cast to
float32 first, as a ``keras.losses.Loss`` does (:func:`float32_outputs`).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core.validate import invalid
from dkm_tf.graph.input_struct import shapes

__all__ = ["SUM_TOL", "class_targets", "float32_outputs", "not_cross_entropy", "resolve_loss",
           "sum_tolerance", "to_numpy"]

SUM_TOL = 1e-3  # |sum_c exp(-L(c, f(x))) - 1| allowed for a cross-entropy (float32 output)
_HALF_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}  # see sum_tolerance


def class_targets(model, loss_fn, x0, pred, keras):
    """The C targets ``t_c`` (sparse ``[c]`` or one-hot) for which ``exp(-L(t_c, f(x)))`` are
    the model's class probabilities, and the tolerance of their sum (:func:`sum_tolerance`);
    raise if the loss is not such a cross-entropy."""
    tol = sum_tolerance(pred)
    pred = float32_outputs(pred)  # a loss function computes in its input's dtype
    shape = tuple(pred.shape) if hasattr(pred, "shape") else None
    if shape is None or len(shape) != 2 or shape[1] < 2:
        got = f"output {shape}" if shape is not None else f"outputs {shapes(pred)}"
        raise invalid("weighting", "None for a model that is not a classifier with one output "
                      "of shape (batch, classes) (weighting='fisher' takes the expectation "
                      "over the model's predicted classes)", f"'fisher' with {got}")
    n = int(shape[1])
    out = to_numpy(pred).astype(np.float64)
    probabilities = bool(np.all(out >= 0) and abs(out.sum() - 1.0) <= tol)
    name = getattr(loss_fn, "__name__", "")
    if not probabilities and (getattr(loss_fn, "from_logits", None) is False or name in (
            "sparse_categorical_crossentropy", "categorical_crossentropy")):
        raise not_cross_entropy(model, n, f"{getattr(loss_fn, 'name', name)} with "
                                 f"from_logits=False on outputs that are not probabilities "
                                 f"(first sample: {np.round(out[0], 4).tolist()[:8]})")
    found = []
    for kind in ("sparse", "one-hot"):
        targets = [np.array([c], np.int32) if kind == "sparse"
                   else np.eye(n, dtype=np.float32)[c:c + 1] for c in range(n)]
        try:
            total = sum(float(np.exp(-to_numpy(keras.ops.mean(loss_fn(t, pred)))))
                        for t in targets)
        except Exception as e:  # noqa: BLE001 (this label format does not fit the loss)
            found.append(f"{kind} labels: {type(e).__name__}: {str(e).strip()[:200]}")
            continue
        if min(abs(total - 1.0), abs(total - out.sum())) <= SUM_TOL:  # p_c, as stored (R6)
            return targets, tol
        found.append(f"{kind} labels: sum_c exp(-loss) = {total:.6g}")
    raise not_cross_entropy(model, n, "; ".join(found))


def not_cross_entropy(model, n, received):
    return invalid("loss", f"a cross-entropy of the model's output (for {model.name!r}'s "
                   f"{n} classes, sum_c exp(-loss(c)) = 1: from_logits=True for logits), needed "
                   "by weighting='fisher' (log p(c|x) = -loss(c))", received)


def sum_tolerance(pred):
    """``|sum_c p_c - 1|`` allowed for ``pred``: :data:`SUM_TOL`, or 2 eps of a float16 / bfloat16
    output (a bfloat16 softmax head summed to 1.0019 with TF_ENABLE_ONEDNN_OPTS=0: refused)."""
    import keras  # noqa: PLC0415
    dtypes = [keras.backend.standardize_dtype(t.dtype) for t in keras.tree.flatten(pred)
              if getattr(t, "dtype", None) is not None]
    return max([SUM_TOL] + [2 * _HALF_EPS[d] for d in dtypes if d in _HALF_EPS])


def float32_outputs(pred):
    """Model outputs with float16 / bfloat16 ones (mixed-precision heads) cast to float32, as
    a ``keras.losses.Loss`` does: a loss function such as the string
    ``"sparse_categorical_crossentropy"`` otherwise computes in bfloat16, whose rounding
    breaks ``sum_c exp(-L(c)) = 1`` and the Fisher sums."""
    import keras  # noqa: PLC0415

    def cast(t):
        if getattr(t, "dtype", None) is not None and keras.backend.standardize_dtype(
                t.dtype) in ("float16", "bfloat16"):
            return keras.ops.cast(t, "float32")
        return t
    return keras.tree.map_structure(cast, pred)


def to_numpy(t):
    """``t`` as a numpy array; float16 / bfloat16 (no numpy scalar for 0-d bfloat16 on every
    backend) as float32, so mixed-precision outputs and losses convert."""
    import keras  # noqa: PLC0415

    return keras.ops.convert_to_numpy(float32_outputs(t))


def resolve_loss(model, loss, keras):
    if loss is None:
        loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
        if loss is None:
            raise invalid("loss", f"a loss (e.g. 'sparse_categorical_crossentropy', a "
                          f"keras.losses.Loss or a callable(y_true, y_pred)) because model "
                          f"{model.name!r} is not compiled with one (weighting='fisher' "
                          "needs the loss's gradients)", loss)
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError as e:
            raise invalid("loss", "a Keras loss name or a callable", loss) from e
    if not callable(loss):
        raise invalid("loss", "a single loss callable(y_true, y_pred) (multi-output models: "
                      "pass one loss that takes all outputs)", loss)
    return loss
