"""``factorise_convs``: a model copy with chosen Conv2D layers run as ``FactorisedConv2D``.

A layer is replaced only where its FLOP count (methods.md §2.6, :mod:`dkm_tf.core.kernel_flops`)
says the factorised form is cheaper than the plain conv, unless ``force=True``; every layer
named in ``factors`` and every other Conv2D is reported (replaced or kept, and why).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from dkm_tf.core.kernel_flops import CRITERIA, MIXINGS, kernel_flops
from dkm_tf.core.validate import check_bool, check_choice, invalid, invalid_type

__all__ = ["FactorisationReport", "LayerFactorisation", "factorise_convs"]

# factors this much closer to the BN-folded kernel W s than to W: BN folded in. Low because
# k-means shrinks towards zero (its error e has <e, W> = -|e|^2), so lossy factors of W itself
# come within sqrt(1 - r) of W s for some s < 1 (r = |e|^2 / |W|^2): refused only if r > 0.94
FOLDED_RATIO = 0.25


@dataclasses.dataclass(frozen=True)
class LayerFactorisation:
    """One Conv2D's outcome: ``action`` is "replaced" or "kept"; ``flops`` the
    :class:`~dkm_tf.core.kernel_flops.KernelFlops` dict (None without factors);
    ``ratio``: baseline / factorised MACs under the criterion; ``kernel_max_abs_diff``:
    max |decoded factors - the layer's current kernel| (large: the factors are not this
    layer's kernel, the replacement changes the model)."""

    name: str
    action: str
    reason: str
    ratio: float | None = None
    flops: dict | None = None
    kernel_max_abs_diff: float | None = None


@dataclasses.dataclass(frozen=True)
class FactorisationReport:
    """Per-layer outcomes of :func:`factorise_convs`."""

    layers: tuple
    criterion: str
    mixing: str

    @property
    def replaced(self):
        """Names of the replaced layers."""
        return [r.name for r in self.layers if r.action == "replaced"]

    def summary(self):
        """One line per layer."""
        lines = [f"factorise_convs (criterion={self.criterion}, mixing={self.mixing}):"]
        for r in self.layers:
            ratio = "" if r.ratio is None else f" FLOPs ratio {r.ratio:.2f}x"
            lines.append(f"  {r.name}: {r.action}{ratio} - {r.reason}")
        return "\n".join(lines)


def _as_factors(name, value):
    """``(codebook, indices, scales)`` from a tuple or a kernel palette; transforms refused."""
    transforms = None
    if hasattr(value, "layout"):
        from dkm_tf.core.kernel_codebook import kernel_factors  # noqa: PLC0415

        codebook, indices, transforms, scales = kernel_factors(value)
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        codebook, indices, scales = value
    elif isinstance(value, (tuple, list)) and len(value) == 4:  # kernel_factors' order
        codebook, indices, transforms, scales = value
    else:
        raise invalid(f"factors[{name!r}]", "a tuple (codebook (K, kh, kw), indices (cin, "
                      "cout), scales (cin, cout)), kernel_factors()' (codebook, indices, "
                      "transforms, scales) or a unit='kernel' palette", value)
    if transforms is not None and np.any(np.asarray(transforms) != 0):
        raise invalid(f"factors[{name!r}]", "factors without transforms (FactorisedConv2D "
                      "does not run transform-invariant indices; cluster with transforms=1)",
                      f"transforms with ids {sorted(set(np.asarray(transforms).ravel()))}")
    return codebook, indices, scales


def _factors_map(factors):
    if isinstance(factors, Mapping):
        return dict(factors)
    if isinstance(factors, (str, bytes)) or not hasattr(factors, "__iter__"):
        raise invalid_type("factors", "a mapping {layer_name: (codebook, indices, scales)} or "
                           "a list of unit='kernel' palettes", factors)
    out = {}
    for p in factors:
        if not hasattr(p, "layer_name"):
            raise invalid_type("factors", "palettes with a `layer_name`", p)
        out[p.layer_name] = p
    return out


def _conv_problem(layer, keras):
    """Why a layer cannot become a FactorisedConv2D, or None."""
    if type(layer) is not keras.layers.Conv2D:
        return f"{type(layer).__name__} is not a plain Conv2D"
    if layer.data_format != "channels_last":
        return "data_format='channels_first' (FactorisedConv2D is channels-last only)"
    if tuple(layer.dilation_rate) != (1, 1):
        return f"dilation_rate={tuple(layer.dilation_rate)} (only 1 is supported)"
    if layer.groups != 1:
        return f"groups={layer.groups} (only 1 is supported)"
    if layer.padding not in ("same", "valid"):
        return f"padding={layer.padding!r}"
    return None


def _form_ratio(flops, idx, form, criterion, mixing):
    """(form, baseline / MACs) of the chosen factorisation under ``criterion``."""
    if form == "auto":
        form = flops.best
    if form == "conv_then_add" or criterion == "paper":
        return form, flops.ratio(criterion, mixing)
    if criterion == "theoretical":
        return form, flops.baseline / max(flops.add_then_conv_total, 1)
    v = max(len(np.unique(col)) for col in np.asarray(idx).T)  # realised: padded slots
    per_out_tap = flops.baseline // max(idx.shape[0] * idx.shape[1], 1)  # Ho Wo kh kw
    realised = flops.add_then_conv_additions * v + per_out_tap * idx.shape[1] * v
    return form, flops.baseline / max(realised, 1)


def factorise_convs(model, factors, *, force=False, mixing="dense", criterion="theoretical",
                    form="auto"):
    """A copy of ``model`` whose chosen Conv2D layers run as :class:`FactorisedConv2D`.

    Args:
        model: a Sequential or Functional Keras model (nested ones included).
        factors: ``{layer_name: (codebook (K, kh, kw), indices (cin, cout), scales (cin,
            cout))}``; a value may also be ``kernel_factors``' 4-tuple (codebook, indices,
            transforms, scales) or a ``unit="kernel"`` palette (decoded with
            :func:`dkm_tf.core.kernel_codebook.kernel_factors`); a list of palettes is read
            as ``{p.layer_name: p}``. Non-trivial transforms are refused.
        force: replace every named layer, even where the count says it is not cheaper.
        mixing: the replacement's accumulation, ``"dense"`` or ``"gather"``.
        criterion: the FLOP count compared with the baseline: ``"paper"`` (Son et al.'s
            ``calc_flops``: min of conv-then-add / add-then-conv, input size, scaled terms
            omitted), ``"theoretical"`` (conv-then-add with its scaled accumulation, the form
            the layer runs; default) or ``"realised"`` (the MACs the layer executes with
            ``mixing``, padded slots and dense mixing included).
        form: ``"auto"`` (per layer, the cheaper of conv-then-add and add-then-conv with
            their scaled terms, :attr:`dkm_tf.core.kernel_flops.KernelFlops.best`),
            ``"conv_then_add"`` or ``"add_then_conv"`` (dense mixing only).

    Returns:
        ``(new_model, report)``: an independent uncompiled copy (biases and activations kept,
        kernels from the factors) and a :class:`FactorisationReport`.

    Raises:
        ValueError: a name in ``factors`` that is no layer of the model, a named layer that
            cannot be factorised (not a plain channels-last Conv2D with dilation 1), factors
            whose shapes do not match the layer, indices out of range, transforms.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415
    from dkm_tf.graph.copying import _copy_model, copy_layer  # noqa: PLC0415
    from dkm_tf.graph.factorised import FactorisedConv2D, check_factors  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise invalid_type("model", "a keras.Model", model)
    force = check_bool("force", force)
    check_choice("mixing", mixing, MIXINGS)
    check_choice("criterion", criterion, CRITERIA)
    check_choice("form", form, ("auto", "conv_then_add", "add_then_conv"))
    if form == "add_then_conv" and mixing != "dense":
        raise invalid("mixing", "'dense' with form='add_then_conv'", mixing)
    wanted = _factors_map(factors)
    layers = {layer.name: layer for layer in walk_layers(model)}
    unknown = sorted(set(wanted) - set(layers))
    if unknown:
        convs = sorted(n for n, lay in layers.items() if isinstance(lay, keras.layers.Conv2D))
        raise invalid("factors", f"names of Conv2D layers of the model ({convs})",
                      f"unknown layer names {unknown}")
    from dkm_tf.graph.batchnorm import _plan  # noqa: PLC0415 (imports keras)

    bn_after = {}  # id(layer) -> the BatchNormalization fold_batch_norm would fold into it
    if any(isinstance(lay, keras.layers.BatchNormalization) for lay in layers.values()):
        try:
            bn_after = _plan(model).fold
        except (TypeError, ValueError):  # a model fold_batch_norm cannot read: no check
            bn_after = {}
    rows, plan = [], {}
    for name, layer in layers.items():
        if name not in wanted:
            if isinstance(layer, keras.layers.Conv2D):
                rows.append(LayerFactorisation(name, "kept", "no factors given"))
            continue
        problem = _conv_problem(layer, keras)
        if problem:
            raise invalid(f"factors[{name!r}]", "the name of a plain channels-last Conv2D "
                          "with dilation 1 and groups 1", f"{name!r}: {problem}")
        codebook, indices, scales = _as_factors(name, wanted[name])
        cb, idx, sc, _ = check_factors(codebook, indices, scales)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        kh, kw, cin, cout = kernel.shape
        if cb.shape[1:] != (kh, kw) or idx.shape != (cin, cout):
            raise invalid(f"factors[{name!r}]", f"codebook (K, {kh}, {kw}) and indices/scales "
                          f"({cin}, {cout}) for layer {name!r} with kernel {kernel.shape}",
                          f"codebook {cb.shape}, indices {idx.shape}")
        decoded = (cb[idx] * sc[..., None, None]).transpose(2, 3, 0, 1)
        diff = float(np.max(np.abs(decoded - kernel)))
        _check_not_folded(name, layer, decoded, kernel, diff, bn_after)
        in_hw, per_position = _input_hw(layer)
        flops = kernel_flops(idx, in_hw=in_hw, kernel=(kh, kw), strides=layer.strides,
                             padding=layer.padding,
                             out_hw=(1, 1) if per_position else None)
        chosen, ratio = _form_ratio(flops, idx, form if mixing == "dense" else
                                    "conv_then_add", criterion, mixing)
        cheaper = ratio > 1.0
        where = " (per output position: spatial size unknown)" if per_position else ""
        base = flops.baseline_for(criterion)  # the chosen form's MACs, not conv-then-add's
        count = f"{round(base / ratio):,} vs {base:,} MACs{where}"
        if cheaper or force:
            reason = ("cheaper: " if cheaper else "forced although not cheaper: ") + count
            reason += f" ({chosen.replace('_', '-')})"
            if flops.best != chosen:
                reason += f"; {flops.best.replace('_', '-')} would be cheaper"
            dropped = [a for a in ("kernel_regularizer", "bias_regularizer",
                                   "activity_regularizer", "kernel_constraint",
                                   "bias_constraint") if getattr(layer, a, None) is not None]
            if dropped:  # FactorisedConv2D has none: say so (it matters for further training)
                reason += f"; {', '.join(dropped)} dropped"
            plan[name] = (cb, idx, sc, chosen)
            rows.append(LayerFactorisation(name, "replaced", reason, ratio, flops.to_dict(),
                                           diff))
        else:
            rows.append(LayerFactorisation(name, "kept", "not cheaper: " + count, ratio,
                                           flops.to_dict(), diff))

    def clone(layer):
        if layer.name not in plan:
            return copy_layer(layer)
        cb, idx, sc, chosen = plan[layer.name]
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        return FactorisedConv2D.from_factors(
            cb, idx, sc, bias, strides=layer.strides, padding=layer.padding,
            activation=keras.activations.serialize(layer.activation),
            use_bias=layer.use_bias, mixing=mixing, form=chosen, name=layer.name,
            dtype=layer.dtype_policy.name, trainable=layer.trainable)

    new_model = _copy_model(model, clone)
    return new_model, FactorisationReport(tuple(rows), criterion, mixing)


def _check_not_folded(name, layer, decoded, kernel, diff, bn_after):
    """Refuse factors of ``layer``'s kernel with the BatchNormalization after it folded in
    (``share_weights`` folds by default) when that BatchNormalization is still in the model:
    it would be applied twice. Told apart by distance: such factors are much closer to the
    folded kernel ``W s`` (``s = gamma / sqrt(var + eps)``) than to ``W`` (a clustering error
    uncorrelated with ``W (s - 1)`` only adds to the distance to ``W s``)."""
    bn = bn_after.get(id(layer))
    if bn is None or diff <= 1e-6 * (float(np.max(np.abs(kernel))) + 1e-30):
        return
    gamma = 1.0 if getattr(bn, "gamma", None) is None else np.asarray(bn.gamma.numpy(),
                                                                      np.float64)
    s = gamma / np.sqrt(np.asarray(bn.moving_variance.numpy(), np.float64) + bn.epsilon)
    w, d = kernel.astype(np.float64), decoded.astype(np.float64)
    to_own, to_folded = float(np.linalg.norm(d - w)), float(np.linalg.norm(d - w * s))
    if to_folded < FOLDED_RATIO * to_own:
        raise invalid(f"factors[{name!r}]", f"factors of layer {name!r}'s kernel in this "
                      f"model (BatchNormalization {bn.name!r} follows it and is not folded "
                      "here; share_weights folds it by default: factorise ShareResult.model, "
                      "or cluster with fold_bn=False)", "factors of the kernel with "
                      f"{bn.name!r} folded in (distance {to_folded:.4g} to the folded kernel, "
                      f"{to_own:.4g} to the layer's): the outputs would apply {bn.name!r} "
                      "twice")


def _input_hw(layer):
    """``((H, W), per_position)``: the layer's input size, or when unknown a stand-in for one
    output position: the strides (add-then-conv's input additions scale with the input
    positions, sh * sw per output position; every other term with the output positions)."""
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        shape = tuple((layer.get_build_config() or {}).get("input_shape") or ())
    if len(shape) == 4 and shape[1] and shape[2]:
        return (int(shape[1]), int(shape[2])), False
    return tuple(int(v) for v in layer.strides), True
