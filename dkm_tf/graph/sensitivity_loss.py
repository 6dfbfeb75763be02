"""The loss of ``weighting="fisher"``: resolved, and checked to be the model's cross-entropy.

The true Fisher (``labels="model"``, :mod:`.sensitivity`) reads the model's class
probabilities off its loss, ``p(c | x) = exp(-L(c, f(x)))``: :func:`class_targets` finds the
C targets ``t_c`` (sparse ``[c]`` or one-hot) for which that holds: ``sum_c p(c | x) = 1`` to
:func:`sum_tolerance`, and ``p(. | x)`` the head's own distribution (its probabilities, or the
softmax of its logits; :func:`distance`) on the first sample and on a shifted output
(:func:`_check_classes`: a loss that renormalises, or a constant log(C), sums to 1 too), and
on every sample in ``fisher_importance`` (:func:`check_distribution`).
Mixed-precision (float16 / bfloat16) outputs are cast to float32 first, as a
``keras.losses.Loss`` does (:func:`float32_outputs`).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core.validate import invalid
from dkm_tf.graph.input_struct import shapes

__all__ = ["NOT_A_CLASSIFIER", "SUM_TOL", "LossMismatchError", "NotAClassifierError",
           "WeightingError", "check_distribution", "class_targets", "distance",
           "float32_outputs", "not_cross_entropy", "own_distributions", "resolve_loss",
           "sum_tolerance", "to_numpy"]

SUM_TOL = 1e-3  # |sum_c exp(-L(c, f(x))) - 1| allowed for a cross-entropy (float32 output)
_HALF_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}  # see sum_tolerance


class LossMismatchError(ValueError):
    """The ``ValueError`` for a ``loss`` that is not the cross-entropy of the model's output
    (``dkm-tf compress``, which picks the loss itself, reports it as a bad ``--weighting``);
    ``received``: what the check found."""

    def __init__(self, expected, received):
        super().__init__(str(invalid("loss", expected, received)))
        self.received = received


class WeightingError(ValueError):
    """The ``ValueError`` naming ``weighting`` for a model weighting='fisher' cannot weigh
    (``dkm-tf compress`` reports it as a bad ``--weighting``, exit 2); ``expected``: what
    would do, starting "None"; ``received``: what 'fisher' found."""

    def __init__(self, expected, received):
        super().__init__(str(invalid("weighting", expected, f"'fisher' with {received}")))
        self.expected, self.received = expected, received


class NotAClassifierError(WeightingError):
    """A model that is not a classifier with one output of shape (batch, classes);
    ``received``: the output(s) found."""

    def __init__(self, received):
        super().__init__(f"None {NOT_A_CLASSIFIER}", received)


NOT_A_CLASSIFIER = ("for a model that is not a classifier with one output of shape (batch, "
                    "classes) (weighting='fisher' takes the expectation over the model's "
                    "predicted classes)")


def class_targets(model, loss_fn, x0, pred, keras):
    """The C targets ``t_c`` (sparse ``[c]`` or one-hot) for which ``exp(-L(t_c, f(x)))`` are
    the model's class probabilities, the tolerance of their sum (:func:`sum_tolerance`) and
    whether the head outputs probabilities (else logits); raise
    (:class:`LossMismatchError`) if the loss is not such a cross-entropy. Sparse targets are
    tried first; one-hot if they do not fit, or fit only the sum (a one-hot loss written by
    hand broadcasts ``[c]``): the first misfit is raised if neither fits."""
    tol = sum_tolerance(pred)
    pred = float32_outputs(pred)  # a loss function computes in its input's dtype
    shape = tuple(pred.shape) if hasattr(pred, "shape") else None
    if shape is None or len(shape) != 2 or shape[1] < 2:
        got = f"output {shape}" if shape is not None else f"outputs {shapes(pred)}"
        raise NotAClassifierError(got)
    n = int(shape[1])
    out = to_numpy(pred).astype(np.float64)
    probabilities = bool(np.all(out >= 0) and abs(out.sum() - 1.0) <= tol)
    name = getattr(loss_fn, "__name__", "")
    if not probabilities and (getattr(loss_fn, "from_logits", None) is False or name in (
            "sparse_categorical_crossentropy", "categorical_crossentropy")):
        raise not_cross_entropy(model, n, f"{getattr(loss_fn, 'name', name)} with "
                                 f"from_logits=False on outputs that are not probabilities "
                                 f"(first sample: {np.round(out[0], 4).tolist()[:8]})")
    found, first = [], None
    for kind in ("sparse", "one-hot"):
        targets = [np.array([c], np.int32) if kind == "sparse" else _one_hot(n, c)
                   for c in range(n)]
        try:
            p = _class_probabilities(loss_fn, targets, pred, keras)
        except Exception as e:  # noqa: BLE001 (this label format does not fit the loss)
            found.append(f"{kind} labels: {type(e).__name__}: {str(e).strip()[:200]}")
            continue
        total = float(np.sum(p))
        limit = SUM_TOL + n * keras.config.epsilon()  # the loss clips each p_c up to 1e-7
        if min(abs(total - 1.0), abs(total - out.sum())) <= limit:  # p_c, as stored (R6)
            try:
                _check_classes(model, loss_fn, targets, pred, out[0], p, probabilities, tol,
                               keras)
            except LossMismatchError as e:  # sparse [c] broadcast against a one-hot loss
                first = first or e
                continue
            return targets, tol, probabilities
        found.append(f"{kind} labels: sum_c exp(-loss) = {total:.6g}")
    if first is not None:  # neither format is the model's distribution: the first misfit
        raise first
    raise not_cross_entropy(model, n, "; ".join(found))


def _one_hot(n, c):
    """The one-hot target of class ``c`` of ``n``, its own (1, n) array: a row view of
    ``np.eye(n)`` kept the n x n matrix alive per row (4 n^3 bytes: 4 GB at n = 1000)."""
    row = np.zeros((1, n), np.float32)
    row[0, c] = 1.0
    return row


def _class_probabilities(loss_fn, targets, pred, keras):
    """``exp(-L(t_c, pred))`` for each target ``t_c``, as float64: the loss's ``p_c``."""
    return np.array([float(np.exp(-to_numpy(keras.ops.mean(loss_fn(t, pred)))))
                     for t in targets])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))  # per row of a batch
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _keras_logits(pred, out):
    """``(activation, logits)`` of an output that carries its logits, else ``(None, None)``:
    on TensorFlow and JAX a Keras softmax or sigmoid activation keeps its input on its output
    as ``_keras_logits``; TensorFlow's cross-entropies read those instead of the output,
    whatever ``from_logits`` says, JAX's (and torch's) do not."""
    logits = getattr(pred, "_keras_logits", None)
    if logits is None:
        return None, None
    z = to_numpy(logits).astype(np.float64).reshape(out.shape)
    for name, f in (("softmax", _softmax), ("sigmoid", _sigmoid)):
        if np.allclose(f(z), out, rtol=0, atol=1e-5):
            return name, z
    return None, None


def _check_classes(model, loss_fn, targets, pred, out, p, probabilities, tol, keras):
    """Raise unless the loss's ``p_c = exp(-L(c, f(x)))`` is the model's own distribution,
    as a whole: ``out`` itself for a probability head, ``softmax(out)`` for logits, to
    ``sum_c |p_c - q_c| <= tol + 2 C * 1e-7`` (:func:`distance`, :func:`check_distribution`).
    A per-class tolerance let any distribution through at C ~ 1000 classes.

    ``sum_c p_c = 1`` alone is passed by any loss that renormalises (Keras'
    ``sparse_categorical_crossentropy`` on logits, from_logits=False, behind a lambda; a
    focal or tempered loss normalised again) and by a constant loss of log(C) (importances
    all 0). ``out``: the first sample's output (float64), ``p`` its ``p_c``, ``tol`` the
    output dtype's tolerance (:func:`sum_tolerance`: a stored bfloat16 probability is off by up
    to 2 eps from what a loss renormalises). A softmax or sigmoid output keeps its logits
    (:func:`_keras_logits`), which TensorFlow's cross-entropies read whatever ``from_logits``
    says: ``softmax`` of those is the distribution too (a sigmoid head's, as before). The
    same is checked at a second, non-uniform output made from ``out`` (:func:`_shifted`),
    float32-exact (:data:`SUM_TOL`): a loss that agrees only at a uniform output (a constant
    log(C), the wrapper above) is caught on an untrained or zero-initialised head too.
    ``fisher_importance`` checks every sample the same way (:func:`check_distribution`)."""
    act, z = _keras_logits(pred, out[None])
    own = [out] if probabilities else [_softmax(out)] + ([] if z is None else [_softmax(z[0])])
    shifted, shifted_own = _shifted(out, act, None if z is None else z[0], probabilities,
                                    pred.dtype, keras)
    points = (("sample 0", pred, own, p, tol),
              ("sample 0's output shifted (a second check point)", shifted, shifted_own, None,
               SUM_TOL))
    for where, value, wants, p_row, limit in points:
        if p_row is None:
            try:
                p_row = _class_probabilities(loss_fn, targets, value, keras)
            except Exception as e:  # noqa: BLE001 (it took the model's own output)
                raise LossMismatchError(
                    "a loss that takes any output of the model's shape",
                    f"a loss that failed on {where}: {type(e).__name__}: {e}") from e
        check_distribution(model, p_row, wants, limit, where, probabilities, keras)


def check_distribution(model, p_row, wants, tol, where, probabilities, keras):
    """Raise (:class:`LossMismatchError`, naming the class and both values) unless the loss's
    ``p_row`` is one of ``wants`` (the head's own distributions at ``where``) to
    ``sum_c |p_c - q_c| <= tol + 2 C eps``: Keras clips each ``p_c`` up to 1e-7 (eps), and
    TensorFlow's loss on a head without kept logits renormalises after clipping, which moves
    about twice the clipped mass (a correct loss on a confident 12,000-class head)."""
    n = len(p_row)
    limit = tol + 2 * n * keras.config.epsilon()
    if any(distance(p_row, q) <= limit for q in wants):  # NaN fails
        return
    head = "probabilities" if probabilities else "softmax of its logits"
    fix = ("'sparse_categorical_crossentropy' (or keras.losses.SparseCategoricalCrossentropy())"
           if probabilities else "keras.losses.SparseCategoricalCrossentropy(from_logits=True)")
    q = wants[0]
    c = int(np.nanargmax(np.abs(p_row - q))) if not np.isnan(p_row).all() else 0
    raise LossMismatchError(
        "a cross-entropy of the model's output: exp(-loss(c)) equal to the "
        f"model's {head} over its {n} classes (model {model.name!r}, to {limit:.3g} in "
        "sum_c |exp(-loss(c)) - p_c|), needed by weighting='fisher' (log p(c|x) = "
        f"-loss(c)); e.g. {fix}, or its Categorical form for one-hot labels, not wrapped "
        "in a function that clips or renormalises",
        f"a loss whose exp(-loss) for class {c} on {where} is {p_row[c]:.6g}, the "
        f"model's {head}: {q[c]:.6g} (sum_c |difference| = {distance(p_row, q):.3g})")


def own_distributions(pred, probabilities):
    """The head's own distributions of a batch output ``pred`` (rows of float64 arrays, the
    candidates :func:`check_distribution` takes): its probabilities, or the softmax of its
    logits (and of the logits a softmax / sigmoid output keeps, :func:`_keras_logits`)."""
    out = to_numpy(pred).astype(np.float64)
    if probabilities:
        return [out]
    _, z = _keras_logits(pred, out)
    return [_softmax(out)] + ([] if z is None else [_softmax(z)])


def distance(p, q):
    """``sum_c |p_c - q_c|`` (twice the total variation; NaN if either is): a per-class
    tolerance passes any distribution at C ~ 1000, where every ``p_c`` is ~ 1e-3."""
    return float(np.sum(np.abs(np.asarray(p, np.float64) - q)))


def _shifted(out, act, z, probabilities, dtype, keras):
    """A second output, non-uniform, and the distributions it stands for: the head's
    activation (``act`` of the logits ``z``, so it keeps them as the model's output does)
    of ``z + s``; else logits ``out + s``, or probabilities ``out`` mixed half and half with
    ``softmax(s)``: ``s = linspace(0, 2 + log C, C)``, so it moves the distribution by as much
    at C = 1000 classes as at 10 (``linspace(0, 2)`` moved each p_c < 1e-3 there)."""
    shift = np.linspace(0.0, 2.0 + np.log(out.size), out.size)
    if act is not None:
        row = (_softmax if act == "softmax" else _sigmoid)(z + shift)
        value = getattr(keras.activations, act)(keras.ops.cast((z + shift)[None], dtype))
        return value, ([row] if probabilities else [_softmax(row), _softmax(z + shift)])
    row = 0.5 * out + 0.5 * _softmax(shift) if probabilities else out + shift
    row = row / row.sum() if probabilities else row
    value = keras.ops.cast(keras.ops.convert_to_tensor(row[None]), dtype)
    return value, [row if probabilities else _softmax(row)]


def not_cross_entropy(model, n, received):
    return LossMismatchError(f"a cross-entropy of the model's output (for {model.name!r}'s "
                             f"{n} classes, sum_c exp(-loss(c)) = 1: from_logits=True for "
                             "logits), needed by weighting='fisher' (log p(c|x) = -loss(c))",
                             received)


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
