"""Sensitivity-weighted k-means: Fisher importance of each weight, and weighted k-means.

Clustering a weight w to c changes the loss by about ``1/2 F_ii (w_i - c)^2`` (second-order
Taylor expansion at a trained minimum, with the Hessian approximated by the diagonal of the
Fisher information). So the k-means objective becomes the **weighted** squared error

    sum_i F_ii (w_i - c_{a(i)})^2,      F_ii = mean over samples n of (dL_n / dw_i)^2

(SqueezeLLM, Kim et al., 2023, §4.1, eqs. 3-4; coremltools' ``SKMPalettizer``, "sensitive
k-means"). ``F`` is the empirical Fisher: the squared gradient of the loss of **one sample at a
time**, averaged over the samples given (squaring a batch gradient would let the samples'
gradients cancel first). Inference mode (``training=False``: BatchNormalization uses its
moving statistics, dropout is off).

Scalar units use the 1-D engine's weighted form (:class:`dkm_tf.core._kmeans1d.Weighted1D`:
sorted distinct values with weights; DP seed + windowed-DP refinement, near-optimal for the
weighted SSE); each distinct value's weight is the sum of the importances of the weights
holding it. Vector units (rows, kernels) are weighted **per coordinate**: unit u is assigned
to ``argmin_k sum_j F_uj (x_uj - c_kj)^2`` and ``c_kj = sum_u F_uj x_uj / sum_u F_uj`` over
its members (weighted Lloyd from the plain k-means solution), which is the same diagonal
Fisher objective as the scalar case.

Importances are floored at ``1e-6 x`` their tensor's mean so that every weight still counts
a little (a weight with zero gradient would otherwise be free to land anywhere); a tensor
whose gradients are all zero is clustered unweighted, and its palette's note says so.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core import _kmeans1d
from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import check_choice, invalid

__all__ = ["WEIGHTINGS", "check_sparse", "check_weighting", "fisher_importance",
           "weighted_codebook", "weighted_kmeans", "weighted_palette"]

WEIGHTINGS = (None, "fisher")
FLOOR = 1e-6


# ---------------------------------------------------------------------- checks
def check_sparse(weighting, sparse):
    """Refuse ``weighting`` with ``sparsity`` / ``preserve_sparsity`` (not supported)."""
    if weighting is not None and sparse:
        raise invalid("weighting", "None with sparsity or preserve_sparsity (weighted k-means "
                      "has no fixed zero centroid)", weighting)


def check_weighting(model, weighting, data, loss, sparse=False):
    """Validate ``weighting``/``data``/``loss`` eagerly; return ``(x, y, loss_fn)`` or None.

    With ``weighting="fisher"``: ``model`` must be a ``keras.Model``, ``data`` must be
    ``(x, y)`` with as many samples in x as in y, the loss is ``loss`` or the compiled
    model's, and one sample is run through the model and the loss (so data that does not fit
    the model fails here, before any k-means). ``sparse``: sparsity or preserve_sparsity is
    requested (not supported with a weighting).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting is None:
        for name, value in (("data", data), ("loss", loss)):
            if value is not None:
                raise invalid(name, "None unless weighting='fisher'", _short(value))
        return None
    check_sparse(weighting, sparse)
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise invalid("weighting", "None for a single layer (weighting='fisher' needs a "
                      "keras.Model and its loss)", weighting)

    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise invalid("data", "a tuple (x, y) of samples and labels, needed by "
                      "weighting='fisher' (squared gradients of the loss)", _short(data))
    x, y = data
    n_x = _n_samples(x, "data")
    n_y = _n_samples(y, "data")
    if n_x != n_y or n_x < 1:
        raise invalid("data", "(x, y) with the same number (>= 1) of samples",
                      f"x with {n_x} samples, y with {n_y}")
    loss_fn = _resolve_loss(model, loss, keras)
    try:
        value = _loss_value(model, loss_fn, _take(x, 0, 1), _take(y, 0, 1))
    except Exception as e:  # noqa: BLE001 (any failure of the trial batch means misfit data)
        raise ValueError(
            f"Invalid value for argument `data`. Expected (x, y) that fit model "
            f"{model.name!r} (inputs {_input_shapes(model)}) and its loss. Received: x of "
            f"shape {_shapes(x)}, y of shape {_shapes(y)}; one sample failed with: "
            f"{type(e).__name__}: {e}") from e
    if not np.all(np.isfinite(keras.ops.convert_to_numpy(value))):
        raise invalid("data", "samples whose loss is finite", f"a loss of {value}")
    return x, y, loss_fn


def _short(value):
    return f"<{type(value).__name__}>" if hasattr(value, "shape") else value


def _n_samples(x, name):
    import keras  # noqa: PLC0415

    leaves = keras.tree.flatten(x)
    if not leaves or any(getattr(a, "shape", None) is None or len(a.shape) == 0 for a in leaves):
        raise invalid(name, "(x, y) made of arrays with a leading sample axis", _short(x))
    return int(leaves[0].shape[0])


def _take(x, lo, hi):
    import keras  # noqa: PLC0415

    return keras.tree.map_structure(lambda a: a[lo:hi], x)


def _shapes(x):
    import keras  # noqa: PLC0415

    return keras.tree.map_structure(lambda a: tuple(a.shape), x)


def _input_shapes(model):
    try:
        return model.input_shape
    except (AttributeError, ValueError):
        return "unknown"


def _resolve_loss(model, loss, keras):
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


def _loss_value(model, loss_fn, x, y, mapping=None):
    import keras  # noqa: PLC0415

    if mapping is None:
        pred = model(x, training=False)
    else:
        with keras.StatelessScope(state_mapping=mapping):
            pred = model(x, training=False)
    return keras.ops.mean(loss_fn(y, pred))


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
    """A function ``(values, x, y) -> gradients`` of the loss w.r.t. ``variables``."""
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
            return tape.gradient(value, values, unconnected_gradients="zero")
        return grads
    if backend == "jax":
        import jax  # noqa: PLC0415

        return jax.jit(jax.grad(loss_of))
    if backend == "torch":
        import torch  # noqa: PLC0415

        def grads(values, x, y):
            vals = [v.detach().clone().requires_grad_(True) for v in values]
            out = torch.autograd.grad(loss_of(vals, x, y), vals, allow_unused=True)
            return [torch.zeros_like(v) if g is None else g for g, v in zip(out, vals)]
        return grads
    raise ValueError(f"weighting='fisher' does not support the {backend!r} backend "
                     "(supported: tensorflow, jax, torch).")


def fisher_importance(model, data, loss=None, *, variables=None):
    """Diagonal empirical Fisher ``F_ii = mean_n (dL_n/dw_i)^2`` of ``variables``.

    Args:
        model: a built Keras model.
        data: ``(x, y)``: every sample is used, one at a time.
        loss: the loss (name, ``keras.losses.Loss`` or callable); default the compiled one.
        variables: the variables to weigh (default: every clusterable weight of the model).

    Returns:
        ``{id(variable): float64 array of the variable's shape}``.
    """
    import keras  # noqa: PLC0415

    x, y, loss_fn = check_weighting(model, "fisher", data, loss)
    variables = list(variables) if variables is not None else _default_variables(model)
    grads = _gradient_fn(model, loss_fn, variables)
    values = [keras.ops.convert_to_tensor(v.value) for v in variables]
    sums = [np.zeros(tuple(v.shape), np.float64) for v in variables]
    n = _n_samples(x, "data")
    for i in range(n):
        x_i = keras.tree.map_structure(keras.ops.convert_to_tensor, _take(x, i, i + 1))
        y_i = keras.tree.map_structure(keras.ops.convert_to_tensor, _take(y, i, i + 1))
        for s, g in zip(sums, grads(values, x_i, y_i)):
            s += np.square(keras.ops.convert_to_numpy(g).astype(np.float64))
    return {id(v): s / n for v, s in zip(variables, sums)}


# ---------------------------------------------------------------------- weighted k-means
def _floor(importance):
    imp = np.asarray(importance, np.float64)
    if not np.all(np.isfinite(imp)) or np.any(imp < 0):
        raise ValueError("Importances must be finite and >= 0.")
    mean = float(imp.mean()) if imp.size else 0.0
    if mean <= 0:
        return None
    return np.maximum(imp, FLOOR * mean)


def weighted_kmeans(x, importance, n_clusters, *, seed=0, max_iter=100):
    """k-means of units ``x`` (M, d) minimising ``sum_u sum_j F_uj (x_uj - c_{a(u)j})^2``.

    Returns ``(codebook (K', d) float32, indices (M,) int32)``, K' <= K (fewer distinct units
    than K is lossless). Importances that are all zero give plain k-means.
    """
    x = np.asarray(x, np.float64)
    imp = _floor(importance)
    if imp is None:
        return kmeans_lib.cluster_values(x, n_clusters, seed=seed)
    k = int(n_clusters)
    if x.shape[1] == 1:
        vals, inv = np.unique(x[:, 0], return_inverse=True)
        inv = inv.reshape(-1)
        if vals.size <= k:
            return vals[:, None].astype(np.float32), inv.astype(np.int32)
        w = np.bincount(inv, weights=imp[:, 0], minlength=vals.size)
        data = _kmeans1d.Weighted1D(vals, w)
        c = _kmeans1d.solve(data, k, "kmeans++", np.random.default_rng(seed), 3000, True)
        lo, hi = data.bounds(c)  # nearest-centroid intervals; centroids = weighted means
        ws, ss, _ = data.stats(lo, hi)
        c = np.where(ws > 0, ss / np.where(ws > 0, ws, 1.0), c)
        idx = np.searchsorted((c[:-1] + c[1:]) / 2.0, x[:, 0], side="left")
        return c[:, None].astype(np.float32), idx.astype(np.int32)
    c, idx = kmeans_lib.cluster_values(x, k, seed=seed)
    c = c.astype(np.float64)
    if c.shape[0] < k and np.unique(x, axis=0).shape[0] <= k:
        return c.astype(np.float32), idx
    for _ in range(max_iter):
        num = np.zeros_like(c)
        den = np.zeros_like(c)
        np.add.at(num, idx, imp * x)
        np.add.at(den, idx, imp)
        c = np.where(den > 0, num / np.where(den > 0, den, 1.0), c)
        new = _weighted_nearest(x, imp, c)
        if np.array_equal(new, idx):
            break
        idx = new
    return c.astype(np.float32), idx.astype(np.int32)


def _weighted_nearest(x, imp, c, chunk=16384):
    out = np.empty(x.shape[0], np.int64)
    for s in range(0, x.shape[0], chunk):
        xs, fs = x[s:s + chunk], imp[s:s + chunk]
        cost = (fs * xs * xs).sum(1)[:, None] - 2.0 * (fs * xs) @ c.T + fs @ (c * c).T
        out[s:s + chunk] = np.argmin(cost, axis=1)
    return out


def weighted_codebook(kernel, importance, layout, n_clusters, *, seed=0):
    """Weighted k-means of every group of a kernel: codebook (G, K, d), indices (G, M).

    A group with fewer than K centroids repeats its last one (no unit uses the copies), the
    format of :func:`dkm_tf.training.wrapper.kmeans_codebook`.
    """
    units = units_lib.to_units(np.asarray(kernel), layout)
    imps = units_lib.to_units(np.asarray(importance, np.float64), layout)
    books, idxs = [], []
    for g in range(layout.n_groups):
        cb, idx = weighted_kmeans(units[g], imps[g], n_clusters, seed=seed + g)
        books.append(np.concatenate([cb, np.repeat(cb[-1:], n_clusters - cb.shape[0], 0)]))
        idxs.append(idx)
    return np.stack(books).astype(np.float32), np.stack(idxs).astype(np.int32)


def weighted_palette(kernel, importance, *, kind, n_clusters, unit="scalar",
                     granularity="per_tensor", seed=0, layer_name="", weight_name="kernel"):
    """:func:`dkm_tf.cluster_tensor` with Fisher-weighted k-means: a :class:`Palette`."""
    kernel = np.asarray(kernel)
    layout = units_lib.layout_for(kernel.shape, kind, unit, granularity)
    unweighted = _floor(importance) is None
    cb, idx = weighted_codebook(kernel, importance, layout, int(n_clusters), seed=seed)
    used = max(int(np.unique(cb[g], axis=0).shape[0]) for g in range(cb.shape[0]))
    if used < cb.shape[1]:
        cb = cb[:, :max(used, int(idx.max()) + 1)]
    note = ("fisher weighting: all gradients were zero, clustered unweighted" if unweighted
            else "fisher-weighted k-means")
    return palette_lib.Palette(layer_name, weight_name, cb, idx, layout,
                               requested_clusters=int(n_clusters), note=note)
