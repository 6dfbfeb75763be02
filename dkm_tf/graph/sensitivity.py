"""Sensitivity-weighted k-means: the Fisher importance of each weight.

Clustering weights ``w`` to ``w + dw`` changes the model's predictions by about
``KL(p_w || p_{w+dw}) ~ 1/2 dw^T F dw`` where ``F`` is the Fisher information of the model's
predictive distribution (the Gauss-Newton Hessian of the cross-entropy at a trained model).
Keeping its diagonal, the k-means objective becomes the **weighted** squared error

    sum_i I_i (w_i - c_{a(i)})^2                      (SqueezeLLM, Kim et al., 2023, §4.1, eq. 4)

with the importance ``I`` of weighting="fisher" (the default recipe, measured in
``bench/results/fisher_posttrain.md``):

    F_i = 1/N sum_n sum_c p(c | x_n) (d log p(c | x_n) / d w_i)^2,   log p(c | x) = -L(c, f(x))
    I_i = F_i + damping * mean(F)                         (damping = 1, per tensor)

With sample weights (``data=(x, y, sample_weight)``, as Keras' ``fit`` takes them) ``1/N
sum_n`` is the weighted mean ``sum_n s_n (...) / sum_n s_n`` (:mod:`.sensitivity_data` reads
and checks the data).

- **True Fisher** (labels drawn from the model itself, here their exact expectation over the C
  classes): it needs no labels and does not vanish at the training samples the model fits.
  SqueezeLLM's *empirical* Fisher ``1/N sum_n (dL(y_n, f(x_n))/dw_i)^2`` (``labels="data"``)
  uses the true labels instead: at a converged model nearly every sample's gradient is ~0, so
  it is carried by a handful of badly fitted samples (measured, 256 calibration samples: the
  top 1 % of them hold 81-99 % of it on LeNet-5, 33-81 % on the digits CNN) and is noisy.
- **Damping** (Levenberg-Marquardt; GPTQ, Frantar et al., 2023, §4 "dampening" adds a fraction
  of the mean Hessian diagonal): the diagonal drops every cross term of ``F``, so it is a
  rough, noisy model of the loss; adding its mean keeps the centroids from neglecting weights
  of small measured importance, the largest-magnitude ones included (measured: undamped, the
  top 1 % |w| get up to 30 % more error than with plain k-means; ``damping -> inf`` is plain
  k-means).

Gradients are of **one sample at a time** (squaring a batch gradient would let the samples'
gradients cancel first), in inference mode (``training=False``: BatchNormalization uses its
moving statistics, dropout is off). ``p(c | x) = exp(-L(c, f(x)))`` holds for a cross-entropy
loss matching the model's output (logits with ``from_logits=True``, probabilities without);
it is checked first (:mod:`.sensitivity_loss`: each ``p(c | x)`` the head's own probability
or softmax of its logits, as a whole, on every sample and on a shifted output), so a
mismatched loss raises. The weighted k-means itself is
:mod:`dkm_tf.graph.weighted_kmeans`.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core.labels import as_arrays, check_label_range, class_ids, is_sparse_loss
from dkm_tf.core.validate import check_choice, check_finite_samples, check_number, invalid
from dkm_tf.graph.input_struct import as_model_inputs, input_shapes, shapes, take
from dkm_tf.graph.sensitivity_data import (
    check_sample_weight,
    n_samples,
    short,
    split,
    triple_hint,
)
from dkm_tf.graph.sensitivity_loss import (
    SUM_TOL,
    WeightingError,
    check_distribution,
    class_targets,
    float32_outputs,
    not_cross_entropy,
    own_distributions,
    resolve_loss,
    sum_tolerance,
    to_numpy,
)
from dkm_tf.graph.weighted_kmeans import FLOOR, weighted_codebook, weighted_kmeans, weighted_palette

__all__ = ["DAMPING", "FISHER_LABELS", "FLOOR", "SUM_TOL", "WEIGHTINGS", "check_sparse",
           "check_weighting", "fisher_importance", "sum_tolerance", "weighted_codebook",
           "weighted_kmeans", "weighted_palette"]

WEIGHTINGS = (None, "fisher")
FISHER_LABELS = ("model", "data")  # true Fisher (default) / empirical Fisher
DAMPING = 1.0


# ---------------------------------------------------------------------- checks
def check_sparse(weighting, sparse):
    """Refuse ``weighting`` with ``sparsity`` / ``preserve_sparsity`` (not supported)."""
    if weighting is not None and sparse:
        raise invalid("weighting", "None with sparsity or preserve_sparsity (weighted k-means "
                      "has no fixed zero centroid)", weighting)


def check_weighting(model, weighting, data, loss, sparse=False, labels="model",
                    data_used=False):
    """Validate ``weighting``/``data``/``loss`` eagerly; return ``(data, loss_fn)`` or None.

    With ``weighting="fisher"``: ``model`` must be a ``keras.Model``; ``data`` is ``x``, a
    tuple ``(x, y)`` (``y`` may be None; it is only used with ``labels="data"``, which needs
    it) or ``(x, y, sample_weight)``, or a ``tf.data.Dataset`` of such batches
    (:mod:`dkm_tf.graph.sensitivity_data`), with as many samples in y (and weights) as in x;
    the weights of shape ``(N,)`` or ``(N, 1)``, finite, ``>= 0`` and not all 0. The returned
    ``data`` is ``(x, y)`` or ``(x, y, weights)`` as arrays, for :func:`fisher_importance`. The
    loss is ``loss`` or the compiled model's. One sample is run through the model and the loss, so
    data that does not fit the model fails here, before any k-means; with ``labels="model"``
    the loss must also be a cross-entropy of the model's output (``exp(-L(c, f(x)))`` its
    probability of class c, or the softmax of its logits, for each class). ``sparse``:
    sparsity or preserve_sparsity is requested (not supported with a weighting).
    ``data_used``: another option (``refine``) uses ``data``, so it may be given without a
    weighting.
    """
    checked = _check(model, weighting, None if data_used and weighting is None else data,
                     loss, sparse, labels)
    if not checked:
        return checked
    x, y, weights, loss_fn, _, _, _ = checked
    return ((x, y) if weights is None else (x, y, weights)), loss_fn


def _check(model, weighting, data, loss, sparse, labels):
    """:func:`check_weighting`: ``(x, y, sample_weight, loss_fn, targets, tol, probs)``:
    ``targets`` the C class targets (labels="model"), ``tol`` that of their sum, ``probs``
    whether the head outputs probabilities (:mod:`.sensitivity_loss`)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting is None:
        for name, value in (("data", data), ("loss", loss)):
            if value is not None:
                raise invalid(name, "None unless weighting='fisher'", short(value))
        return None
    check_sparse(weighting, sparse)
    check_choice("labels", labels, FISHER_LABELS)
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise invalid("weighting", "None for a single layer (weighting='fisher' needs a "
                      "keras.Model and its loss)", weighting)
    x, y, sample_weight = split(model, data)
    x, y = as_arrays(x), as_arrays(y)  # lists of numbers, as the training functions take them
    if x is None:
        raise invalid("data", "samples x, or a tuple (x, y), needed by weighting='fisher' "
                      "(squared gradients over these samples)", None)
    x = as_model_inputs(model, x)
    n_x = n_samples(x, "data")
    n_y = n_x if y is None else n_samples(y, "data")
    if n_x != n_y or n_x < 1:
        raise invalid("data", "(x, y) with the same number (>= 1) of samples",
                      f"x with {n_x} samples, y with {n_y}")
    sample_weight = check_sample_weight(sample_weight, n_x)
    if labels == "data" and y is None:
        raise invalid("data", "a tuple (x, y) with labels y, needed by labels='data' (the "
                      "empirical Fisher uses the true labels)" + triple_hint(model, data),
                      "samples without labels")
    check_finite_samples("data", x, "for weighting='fisher' (squared gradients over them)")
    loss_fn = resolve_loss(model, loss, keras)
    x0 = take(x, 0, 1)
    try:
        pred = model(x0, training=False)
    except Exception as e:  # noqa: BLE001 (any failure of the trial batch means misfit data)
        raise _misfit(model, x, y, e, triple_hint(model, data)) from e
    if labels == "data" and is_sparse_loss(loss_fn) and hasattr(y, "shape"):
        y = _sparse_labels(y, pred)  # per output shape: (samples,) or per token
    try:
        value = _loss_value(model, loss_fn, x0, take(y, 0, 1)) if y is not None else None
    except Exception as e:  # noqa: BLE001
        raise _misfit(model, x, y, e) from e
    if value is not None and not np.all(np.isfinite(to_numpy(value))):
        raise invalid("data", "samples whose loss is finite", f"a loss of {value}")
    targets, tol, probs = (class_targets(model, loss_fn, x0, pred, keras) if labels == "model"
                           else (None, SUM_TOL, None))
    return x, y, sample_weight, loss_fn, targets, tol, probs


def _sparse_labels(y, pred):
    """``y`` for a sparse cross-entropy (labels="data"): class ids, whole numbers (0.5 would
    be truncated to class 0: the Fisher of other labels, silently) inside the model's classes
    (out of them the loss fails, or is NaN, at that sample); returned as integers. ``pred``:
    the model's output on one sample. A 2-D output (samples, C) takes labels of shape
    (samples,) or (samples, 1); a longer one (per token or pixel: (samples, T, C)) one label
    per position, e.g. (samples, T) or (samples, T, 1), checked against its last axis."""
    shape = tuple(getattr(pred, "shape", None) or ())
    if len(shape) <= 2:
        ids = class_ids(y, "data")
    else:
        ids = class_ids(np.reshape(y, (-1,)), "data")  # whole numbers, any label shape
    classes = shape[-1] if len(shape) >= 2 else None
    check_label_range("data", ids, (None, int(classes)) if classes is not None else None)
    return ids.reshape(np.shape(y))


def _misfit(model, x, y, e, hint=""):
    return ValueError(
        f"Invalid value for argument `data`. Expected (x, y) or x that fit model "
        f"{model.name!r} (inputs {input_shapes(model)}) and its loss{hint}. Received: x of shape "
        f"{shapes(x)}, y of shape {None if y is None else shapes(y)}; one sample failed "
        f"with: {type(e).__name__}: {e}")




def _loss_value(model, loss_fn, x, y, mapping=None):
    import keras  # noqa: PLC0415

    if mapping is None:
        pred = model(x, training=False)
    else:
        with keras.StatelessScope(state_mapping=mapping):
            pred = model(x, training=False)
    return keras.ops.mean(loss_fn(y, float32_outputs(pred)))


# ---------------------------------------------------------------------- Fisher
def _default_variables(model):
    from dkm_tf.graph import clusterable  # noqa: PLC0415

    out, seen = [], set()
    for layer in clusterable.walk_layers(model):
        if layer.built and clusterable.is_clusterable(layer):
            for _, var, _ in clusterable.clusterable_weights(layer):
                if id(var) not in seen:
                    seen.add(id(var))
                    out.append(var)
    return out


def _gradient_fn(model, loss_fn, variables):
    """A function ``(values, x, y) -> (loss, gradients)`` of the loss w.r.t. ``variables``."""
    import keras  # noqa: PLC0415

    def loss_of(values, x, y):
        return _loss_value(model, loss_fn, x, y, list(zip(variables, values)))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        @tf.function(reduce_retracing=True)
        def grads(values, x, y):
            with tf.GradientTape() as tape:
                tape.watch(values)
                value = loss_of(values, x, y)
            return value, tape.gradient(value, values, unconnected_gradients="zero")
        return grads
    if backend == "jax":
        import jax  # noqa: PLC0415

        return jax.jit(jax.value_and_grad(loss_of))
    if backend == "torch":
        import torch  # noqa: PLC0415

        def grads(values, x, y):
            vals = [v.detach().clone().requires_grad_(True) for v in values]
            value = loss_of(vals, x, y)
            out = torch.autograd.grad(value, vals, allow_unused=True)
            return value.detach(), [torch.zeros_like(v) if g is None else g
                                    for g, v in zip(out, vals)]
        return grads
    raise ValueError(f"weighting='fisher' does not support the {backend!r} backend "
                     "(supported: tensorflow, jax, torch).")


def fisher_importance(model, data, loss=None, *, variables=None, labels="model",
                      damping=DAMPING):
    """Diagonal Fisher importance of ``variables``, damped: ``F + damping * mean(F)``.

    ``labels="model"`` (default, the true Fisher; what ``weighting="fisher"`` uses)::

        F_i = 1/N sum_n sum_c p(c | x_n) (d log p(c | x_n) / d w_i)^2,  p(c | x) = exp(-L(c, f(x)))

    (C gradients per sample). ``labels="data"``, the empirical Fisher of SqueezeLLM §4.1::

        F_i = 1/N sum_n (d L(y_n, f(x_n)) / d w_i)^2

    (one gradient per sample; needs labels). With sample weights ``s_n`` (``data=(x, y,
    sample_weight)``) ``1/N sum_n`` becomes the weighted mean ``sum_n s_n (...) / sum_n s_n``
    in both: integer weights give the Fisher of the data with sample n repeated ``s_n`` times;
    samples of weight 0 are not run. The mean in the damping term is per variable.

    Args:
        model: a built Keras model (a classifier for ``labels="model"``).
        data: ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` (``y`` may be None: it is only
            used with ``labels="data"``), or a finite ``tf.data.Dataset`` of such batches
            (read once into arrays): every sample is used, one at a time; for a model of n
            inputs, ``x`` is the list of n arrays. ``sample_weight``: shape ``(N,)`` or
            ``(N, 1)``, finite, ``>= 0``, not all 0 (checked before any gradient); without it
            each sample weighs 1/N.
        loss: the loss (name, ``keras.losses.Loss`` or callable); default the compiled one.
            With ``labels="model"`` a cross-entropy of the model's output (checked).
        variables: the variables to weigh (default: every clusterable weight of the model).
        labels: ``"model"`` (true Fisher) or ``"data"`` (empirical Fisher).
        damping: ``lambda >= 0`` added as ``lambda * mean(F)`` to each variable's ``F``.

    Returns:
        ``{id(variable): float64 array of the variable's shape}``.
    """
    import keras  # noqa: PLC0415

    damping = check_number("damping", damping, "a finite number >= 0", low=0)
    x, y, weights, loss_fn, targets, tol, probs = _check(model, "fisher", data, loss, False,
                                                         labels)
    variables = list(variables) if variables is not None else _default_variables(model)
    grads = _gradient_fn(model, loss_fn, variables)
    values = [keras.ops.convert_to_tensor(v.value) for v in variables]
    sums = [np.zeros(tuple(v.shape), np.float64) for v in variables]
    n = n_samples(x, "data")
    convert = keras.ops.convert_to_tensor
    targets = [convert(t) for t in targets] if targets is not None else None
    for i in range(n):
        w_i = 1.0 if weights is None else float(weights[i])  # p * 1.0 == p: bit-identical
        if w_i == 0.0:
            continue
        x_i = keras.tree.map_structure(lambda a: a if a is None else convert(a),
                                       take(x, i, i + 1))  # an optional input's None
        if targets is None:  # empirical: the sample's own label, weight 1
            pairs = [keras.tree.map_structure(convert, take(y, i, i + 1))]
        else:  # true: every class c, weighted by p(c | x_i) = exp(-L(c))
            pairs = targets
        p_i = np.zeros(len(pairs))
        for c, t in enumerate(pairs):
            value, g = grads(values, x_i, t)
            p = 1.0 if targets is None else float(np.exp(-to_numpy(value)))
            p_i[c] = p
            with np.errstate(invalid="ignore", over="ignore"):  # refused below, named
                for s, g_v in zip(sums, g):
                    s += (p * w_i) * np.square(to_numpy(g_v).astype(np.float64))
        if targets is not None:  # every sample: the sum, then the whole distribution
            total = float(p_i.sum())  # + C eps: the loss clips each p_c up to 1e-7
            if abs(total - 1.0) > tol + len(targets) * keras.config.epsilon():
                raise not_cross_entropy(model, len(targets),
                                        f"sum_c exp(-loss) = {total:.6g} on sample {i}")
            with keras.StatelessScope():  # batch 1 as the loss saw it; no state update
                own = own_distributions(model(x_i, training=False), probs)
            check_distribution(model, p_i, [q[0] for q in own], tol, f"sample {i}", probs,
                               keras)
    out = {}
    for v, s in zip(variables, sums):
        if not np.all(np.isfinite(s)):  # share_weights refused it naming no argument
            raise _not_finite(model, v, s, model(take(x, 0, 1), training=False))
        f = s / (n if weights is None else float(weights.sum()))
        out[id(v)] = f + damping * (float(f.mean()) if f.size else 0.0)
    return out


def _not_finite(model, variable, s, pred):
    """The ``ValueError`` for a variable whose Fisher sum is NaN / inf: a float16 head's
    class probability under 1 / 65504 (a saturated softmax) overflows ``1 / p_c`` in the
    gradient of ``log p_c``, and ``0 * inf`` is NaN (measured: mixed_float16, p_c ~ 8e-7);
    that cause is named only when the output ``pred`` is float16."""
    import keras  # noqa: PLC0415

    bad = int(np.size(s) - np.count_nonzero(np.isfinite(s)))
    name = getattr(variable, "path", None) or getattr(variable, "name", "?")
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in keras.tree.flatten(pred)
              if getattr(t, "dtype", None) is not None}
    why = ("a float16 softmax that saturates (a class probability under 1/65504) overflows "
           "them; compute the last activation in float32 (e.g. keras.layers.Activation("
           "'softmax', dtype='float32'), as the Keras mixed-precision guide advises)"
           if "float16" in dtypes else
           "gradients that overflow float32 (huge weights or inputs), times a class "
           "probability of 0 or not, make them NaN or infinite")
    return WeightingError(f"None for model {model.name!r}, or a head whose gradients of "
                          "log p(c|x) are finite for every class (weighting='fisher' sums "
                          f"them): {why}",
                          f"{bad} of {np.size(s)} NaN or infinite importances for {name}")
