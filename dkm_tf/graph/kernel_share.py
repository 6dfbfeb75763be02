"""Kernel clustering of a Keras model: codebook scopes, palettes, post-training sharing.

Son, Nah, Lee (ECCV 2018), methods §2: every k x k Conv2D kernel (k h k w > 1) is cut into
its 2-D spatial kernels, which are clustered with scaled units
(:mod:`dkm_tf.core.kernel_codebook`) into codebooks of one of these scopes:

* ``"shared"``: one codebook for every clustered Conv2D of the network *with the same kernel
  size*: mixed sizes are grouped by size, each size its own shared codebook (a 7x7 stem gets
  its own, as in the paper's ResNet-18 setting); the report lists the groups;
* ``"layer"``: one codebook per layer;
* a list of groups of layer names (``[["conv1"], ["conv2", "conv3"]]``): one codebook per
  group (the paper's ``--multi a-b=K``); the sizes in a group must agree, and k x k convs
  named in no group stay float (reported).

Dense layers, 1x1 convs and the other layer types are not clustered (the paper keeps them in
fp32): they pass through unchanged and are listed in ``skipped`` with the reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core import kernel_codebook as kc
from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import check_choice, check_n_clusters, invalid, is_int
from dkm_tf.graph.heartbeat import Heartbeat
from dkm_tf.graph.layer_config import override_keys

__all__ = ["CODEBOOK_SCOPES", "KernelGroup", "check_codebook", "check_kernel_options",
           "cluster_groups", "fold_kernel_palettes", "kernel_groups", "scale_loss_note",
           "scale_loss_notes", "scale_loss_parts", "share_kernels"]

CODEBOOK_SCOPES = ("layer", "shared")
LOW_PRECISION = ("float16", "bfloat16")  # kernel dtypes that cannot hold s T(mu) exactly
SCALE_LOSS = "float16 scale"  # marks scale_loss_note's part of a palette note
INT8_RAISE = "scale raised to one int8 step"  # and its part for scale_bits=8
# a float16 subnormal is a multiple of 2^-24: half a step is over 1 % of a scale below this
COARSE_SCALE = 2.0 ** -25 / 0.01
PASS_THROUGH = ("unit='kernel': no k x k spatial kernel (1x1 conv); left float, as Son et al. "
                "keep 1x1 convs and dense layers in fp32")


def check_codebook(codebook):
    """``"layer"``, ``"shared"`` or a tuple of tuples of layer names; else ``ValueError``."""
    if isinstance(codebook, str):
        return check_choice("codebook", codebook, CODEBOOK_SCOPES)
    ok = isinstance(codebook, (list, tuple)) and codebook and all(
        isinstance(g, (list, tuple)) and g and all(isinstance(n, str) for n in g)
        for g in codebook)
    if not ok:
        raise invalid("codebook", f"one of {list(CODEBOOK_SCOPES)} or a non-empty list of "
                      "non-empty lists of layer names", codebook)
    names = [n for g in codebook for n in g]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise invalid("codebook", f"each layer in at most one group (repeated: {dup})", codebook)
    return tuple(tuple(g) for g in codebook)


def check_kernel_options(transforms=1, scale_bits=16):
    """Check ``transforms`` (1, 2, 4, 8) and ``scale_bits`` (16, 8, 32)."""
    for name, value, allowed in (("transforms", transforms, kc.TRANSFORM_COUNTS),
                                 ("scale_bits", scale_bits, kc.SCALE_BITS)):
        if not is_int(value) or value not in allowed:  # not True, not 2.0
            raise invalid(name, f"one of {list(allowed)} (an int)", value)


@dataclasses.dataclass
class KernelGroup:
    """Layers that share one kernel codebook."""

    codebook_id: str
    layers: list  # Keras Conv2D layers
    kernel_size: tuple


def _is_kernel_conv(layer):
    import keras  # noqa: PLC0415

    return isinstance(layer, keras.layers.Conv2D)  # not Depthwise/Separable/Transpose


def _not_kernel_conv(layer):
    """Why ``layer`` (not a Conv2D) is left float by scaled kernel clustering; for a
    TimeDistributed, worded by the layer it wraps (a Dense inside has no k x k kernel)."""
    inner, depth = layer, 0
    while type(inner).__name__ == "TimeDistributed":
        inner, depth = inner.layer, depth + 1
    kind = "TimeDistributed(" * depth + type(inner).__name__ + ")" * depth
    if inner is not layer and _is_kernel_conv(inner) and int(np.prod(inner.kernel.shape[:2])) > 1:
        return ("unit='kernel' with a codebook scope or transforms: a TimeDistributed layer "
                "is not supported (its wrapped Conv2D's kernel is left float; plain "
                "unit='kernel' clusters it)")
    return (f"unit='kernel': {kind} has no k x k Conv2D kernel; left float (Son et al. "
            "cluster only k x k convolutions)")


def kernel_groups(layers, codebook, excluded=()):
    """Sort ``layers`` into codebook groups; ``(groups, skipped)`` with skip reasons.

    Args:
        layers: leaf Keras layers in model order.
        codebook: a checked scope (:func:`check_codebook`).
        excluded: names of layers to leave float (``overrides`` set to None).
    """
    groups, skipped, eligible = {}, [], {}
    for layer in layers:
        if not layer.weights:
            continue
        if any(key in excluded for key in override_keys(layer)):  # "Dense": a TD(Dense) too
            skipped.append((layer.name, "excluded by overrides"))
        elif not _is_kernel_conv(layer):
            skipped.append((layer.name, _not_kernel_conv(layer)))
        elif int(np.prod(layer.kernel.shape[:2])) == 1:
            skipped.append((layer.name, PASS_THROUGH))
        elif str(getattr(layer.kernel.dtype, "name", layer.kernel.dtype)) in LOW_PRECISION:
            # the kernel held s T(mu) rounded to float16 / bfloat16, not palette.decode()
            raise invalid("model", "k x k Conv2D kernels stored in float32 for unit='kernel' "
                          "with a codebook scope (a float32 or mixed_* dtype policy): a "
                          f"{layer.kernel.dtype} kernel cannot hold the products s T(mu) "
                          "exactly; or leave it float with overrides={name: None}",
                          f"layer {layer.name!r} with a {layer.kernel.dtype} kernel")
        elif layer.name in eligible:  # nested models may reuse a name: the palettes and the
            # copy find kernels by name, so one layer would silently get the other's kernel
            raise invalid("model", "k x k Conv2D layers with distinct names for unit='kernel' "
                          "with a codebook scope (palettes are matched to layers by name): "
                          "rename them",
                          f"two layers named {layer.name!r}")
        else:
            eligible[layer.name] = layer
    if isinstance(codebook, tuple):
        named = [n for g in codebook for n in g]
        unknown = [n for n in named if n not in eligible]
        if unknown:
            why = dict(skipped)
            raise invalid("codebook", "groups of clusterable k x k Conv2D layer names ("
                          f"{sorted(eligible)}); not clusterable: "
                          + "; ".join(f"{n}: {why.get(n, 'no such layer')}" for n in unknown),
                          codebook)
        for i, g in enumerate(codebook):
            sizes = sorted({tuple(eligible[n].kernel.shape[:2]) for n in g})
            if len(sizes) > 1:
                raise invalid("codebook", f"one kernel size per group (group {i} mixes "
                              f"{sizes})", codebook)
            groups[f"kernel:group{i}"] = KernelGroup(f"kernel:group{i}",
                                                     [eligible[n] for n in g], sizes[0])
        skipped += [(n, "unit='kernel': in no codebook group; left float")
                    for n in eligible if n not in named]
    else:
        for name, layer in eligible.items():
            size = tuple(int(s) for s in layer.kernel.shape[:2])
            key = (f"kernel:{size[0]}x{size[1]}" if codebook == "shared"
                   else f"kernel:{name}")
            groups.setdefault(key, KernelGroup(key, [], size)).layers.append(layer)
    return list(groups.values()), skipped


def scale_loss_note(raw, stored, scale_bits, step=None, centroid_norms=None):
    """What storing per-kernel scales lost: "" or a note part.

    ``raw``: the scales before storage (a kernel's norm, or a trained float32 scale; 0 for a
    zero kernel), ``stored``: as stored, ``step``: the int8 step of ``scale_bits=8``,
    ``centroid_norms``: with ``raw`` a kernel's norm, the norm of each kernel's centroid (it
    decodes with norm ``stored x centroid norm``); None: the scale's rise is noted. At 16
    bits a kernel whose scale is not 0 but is stored as 0 (|s| below ~3e-8, 2^-25: float16's
    smallest subnormal 2^-24 rounds half down) decodes as a zero kernel, and a stored float16
    subnormal below :data:`COARSE_SCALE` (~3e-6) may be off by over 1 %. At 8 bits a
    non-zero scale is never 0 (|q| >= 1), but one below half a step is raised to one whole
    step: the kernel decodes larger than it was (a norm 1e-8 kernel beside a largest norm of
    0.32 decodes with norm 0.0025). 32 (float32) gives ""."""
    raw, stored = np.ravel(np.asarray(raw, np.float64)), np.ravel(np.abs(stored))
    if scale_bits == 8 and step:
        small = (raw != 0) & (np.abs(raw) < float(step) / 2)
        if not np.any(small):
            return ""
        if centroid_norms is None:  # a trained scale: the kernel grows as its scale does
            times = float(np.max(float(step) / np.abs(raw[small])))
            what = f"scale raised up to {times:.3g} times"
        else:  # a kernel's norm: it decodes with norm |stored| x its centroid's norm
            norms = np.ravel(np.asarray(centroid_norms, np.float64))[small]
            times = float(np.max(stored[small] * norms / np.abs(raw[small])))
            what = f"decoded up to {times:.3g} times its norm"
        return (f"{int(np.sum(small))} of {raw.size} kernel(s): {INT8_RAISE} {float(step):.3g} "
                f"({what}); scale_bits=32 keeps them")
    if scale_bits != 16:
        return ""
    zeroed = int(np.sum((raw != 0) & (stored == 0)))
    coarse = int(np.sum((stored > 0) & (stored < COARSE_SCALE)))
    if not zeroed + coarse:
        return ""
    parts = ([f"{zeroed} of {raw.size} kernel(s): {SCALE_LOSS} underflows to 0 (decoded "
              "as zero kernels)"] if zeroed else []) + (
        [f"{coarse} of {raw.size} kernel(s): {SCALE_LOSS} below {COARSE_SCALE:.2g} (a "
         "subnormal, off by up to over 1 %)"] if coarse else [])
    return "; ".join(parts) + "; scale_bits=32 keeps them"


def scale_loss_parts(note):
    """The parts of a palette ``note`` that :func:`scale_loss_note` wrote (without its
    closing "scale_bits=32 keeps them"): [] when none."""
    return [s for s in (note or "").split("; ") if SCALE_LOSS in s or INT8_RAISE in s]


def scale_loss_notes(palettes):
    """One line per palette whose note says its stored scales lost kernels
    (:func:`scale_loss_note`), naming the layer: for ``compress``' result notes."""
    return [f"kernel scales of {p.layer_name!r}: " + "; ".join(lost)
            + "; scale_bits=32 keeps them"
            for p in palettes if (lost := scale_loss_parts(getattr(p, "note", None)))]


def cluster_groups(groups, n_clusters, *, transforms=1, scale_bits=16, init="kmeans++", seed=0,
                   kernel_of=None, heartbeat=None):
    """k-means of every group: ``{layer name: Palette}`` (palettes of a group share codebook
    and ``codebook_id``). ``kernel_of(layer)`` gives the numpy kernel (default: its value);
    ``heartbeat``: a :class:`~dkm_tf.graph.heartbeat.Heartbeat` that tracks each group."""
    k = check_n_clusters(n_clusters)
    check_kernel_options(transforms, scale_bits)
    odd = [f"{lay.name} ({g.kernel_size[0]}x{g.kernel_size[1]})" for g in groups
           for lay in g.layers if g.kernel_size[0] != g.kernel_size[1]]
    if transforms == 8 and odd:  # raised mid-way, after the square groups were clustered,
        # and without naming the layer
        raise invalid("transforms", "1, 2 or 4 with non-square kernels (8 includes 90-degree "
                      f"turns; non-square: {', '.join(odd)}; or leave them float with "
                      "overrides={name: None})", transforms)
    out = {}
    for gi, group in enumerate(groups):
        kernels = [np.asarray(kernel_of(lay) if kernel_of else lay.kernel.numpy(), np.float32)
                   for lay in group.layers]
        names = ", ".join(lay.name for lay in group.layers)
        def run(kernels=kernels, gi=gi, names=names, group=group):
            return kc.cluster_kernels(kernels, k, transforms=transforms, scale_bits=scale_bits,
                                      init=init, seed=seed + gi,
                                      name=f"codebook {group.codebook_id} ({names})")
        if heartbeat is not None:
            run = heartbeat.track(f"codebook {group.codebook_id} ({names})",
                                  sum(x.size for x in kernels), run)
        cb, assigns = run()
        flat = cb.reshape(1, cb.shape[0], -1)
        n_t = transforms if transforms > 1 else 1
        for lay, a, w in zip(group.layers, assigns, kernels):
            layout = units_lib.layout_for(a.kernel_shape, "conv", "kernel", "per_tensor")
            lost = scale_loss_note(kc.kernel_scales(kc._units_of(w)), a.scales,  # noqa: SLF001
                                   scale_bits, a.scale_step, np.sqrt(np.sum(
                                       cb.reshape(cb.shape[0], -1)[a.indices] ** 2, -1)))
            note = (f"kernel codebook {group.codebook_id} shared by {len(group.layers)} "
                    f"layer(s)" + (f"; int8 scales, step {a.scale_step:.6g}"
                                   if a.scale_step is not None else "")
                    + (f"; K={cb.shape[0]} < n_clusters={k}: the group has no more distinct "
                       "non-zero kernels" if cb.shape[0] < k else "")
                    + (f"; {lost}" if lost else ""))
            out[lay.name] = palette_lib.Palette(
                lay.name, "kernel", flat, a.indices[None], layout, requested_clusters=k,
                codebook_id=group.codebook_id, note=note, scales=a.scales[None],
                transforms=None if a.transforms is None else a.transforms[None],
                n_transforms=n_t, scale_bits=scale_bits)
    return out


def share_kernels(model, n_clusters=16, *, codebook="shared", transforms=1, scale_bits=16,
                  init="kmeans++", seed=0, overrides=None, verbose=False, inplace=False,
                  fold_bn=None):
    """Post-training kernel clustering (``share_weights(..., unit="kernel", codebook=...)``).

    Returns:
        ``(model, palettes, skipped, folded)``: the copy (or ``model`` with ``inplace``)
        whose clustered kernels hold exactly ``palette.decode()``, the palettes, the
        ``(layer, reason)`` pairs of layers left float, and the BatchNormalization layers
        folded first (see :func:`dkm_tf.share_weights`).
    """
    from dkm_tf.graph.copying import _copy_model, copy_layer, iter_layers  # noqa: PLC0415

    codebook = check_codebook(codebook)
    check_n_clusters(n_clusters)
    check_kernel_options(transforms, scale_bits)
    check_choice("init", init, kc.kmeans_lib.INITS)
    excluded = _excluded(overrides)
    from dkm_tf.graph.clusterable import check_overrides  # noqa: PLC0415 (imports keras)

    check_overrides(model, overrides, {})  # a key naming no layer would be ignored
    folded = []
    if fold_bn is not False and not inplace:
        from dkm_tf.graph.batchnorm import maybe_fold  # noqa: PLC0415

        result = maybe_fold(model)
        if result.folded:
            model, inplace, folded = result.model, True, list(result.folded)
    groups, skipped = kernel_groups(iter_layers(model), codebook, excluded)
    if not groups:
        raise ValueError(f"share_weights(unit='kernel') found no k x k Conv2D to cluster in "
                         f"model {model.name!r}: {skipped}")
    with Heartbeat(verbose, len(groups), what="codebook(s)") as beat:  # a line every 15 s
        pals = cluster_groups(groups, n_clusters, transforms=transforms,
                              scale_bits=scale_bits, init=init, seed=seed, heartbeat=beat)
    if inplace:
        for g in groups:
            for lay in g.layers:
                lay.kernel.assign(pals[lay.name].decode().astype(lay.kernel.dtype))
        clone = model
    else:
        def clone_function(layer):
            if layer.name not in pals or not hasattr(layer, "kernel"):
                return copy_layer(layer)
            dec = pals[layer.name].decode()
            return copy_layer(layer, [dec.astype(v.dtype) if v is layer.kernel else v.numpy()
                                      for v in layer.weights])

        clone = _copy_model(model, clone_function)
    palettes = [pals[lay.name] for g in groups for lay in g.layers]
    if verbose:
        for g in groups:
            print(f"  kernel codebook {g.codebook_id} ({g.kernel_size[0]}x{g.kernel_size[1]}, "
                  f"K={pals[g.layers[0].name].n_clusters}, T={transforms}, {scale_bits}-bit "
                  f"scales): {', '.join(lay.name for lay in g.layers)}", flush=True)
        for name, why in skipped:
            print(f"  left float {name}: {why}", flush=True)
    return clone, palettes, skipped, folded


def _excluded(overrides):
    if overrides is None:
        return set()
    if not isinstance(overrides, dict) or any(v is not None for v in overrides.values()):
        raise invalid("overrides", "None or a dict {layer or class name: None} (with "
                      "unit='kernel' and a codebook scope, overrides can only leave layers "
                      "float; K is per codebook)", overrides)
    return set(overrides)


def fold_kernel_palettes(model, palettes):
    """Fold BatchNormalization after kernel-clustered convs into their *scales* (exact).

    The codebook stays shared; a folded scale ``s_oi gamma_o / sqrt(var_o + eps)`` is kept in
    float32 (``scale_bits=32``, noted): rounding it back to 16 bits would change the outputs.
    Other palettes are folded as :func:`dkm_tf.graph.batchnorm_palettes.fold_palettes` does.

    Returns:
        ``(model, palettes)``.
    """
    from dkm_tf.graph.batchnorm import maybe_fold  # noqa: PLC0415
    from dkm_tf.graph.batchnorm_palettes import fold_palettes  # noqa: PLC0415
    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    result = maybe_fold(model)
    if not result.folded:
        return model, list(palettes)
    layers = {layer.name: layer for layer in walk_layers(result.model)}
    out = []
    for p in palettes:
        if p.scales is None or p.name not in result.scales:
            out.extend(fold_palettes([p], result))
            continue
        kh, kw, cin, cout = p.layout.kernel_shape
        mult = np.broadcast_to(result.scales[p.name], p.layout.kernel_shape)[0, 0, 0]
        s = (p.scales.reshape(cout, cin).astype(np.float64) * mult[:, None]).astype(np.float32)
        q = dataclasses.replace(p, scales=s.reshape(1, -1), scale_bits=32,
                                note=f"{p.note}; BatchNormalization folded into the scales "
                                     "(float32)")
        var = getattr(layers[p.layer_name], p.weight_name)
        var.assign(q.decode().astype(var.dtype))
        out.append(q)
    return result.model, out


def kernel_route(unit, codebook="layer", transforms=1, scale_bits=16, **others):
    """True when a call goes to scaled kernel clustering (``unit="kernel"`` with
    ``codebook="shared"``, a list of groups, or ``transforms > 1``); else False (today's
    per-layer path). Raises for a kernel option given with another unit, or for options of
    the per-layer path (``others``: name -> (value, default)) that kernel clustering lacks."""
    codebook = check_codebook(codebook)
    check_kernel_options(transforms, scale_bits)
    route = unit == "kernel" and (codebook != "layer" or transforms != 1)
    if not route:
        for name, value, default in (("codebook", codebook, "layer"),
                                     ("transforms", transforms, 1),
                                     ("scale_bits", scale_bits, 16)):
            if value != default:
                raise invalid(name, f"{default!r} unless scaled kernel clustering "
                              "(unit='kernel' with codebook='shared' or a list of groups, or "
                              f"transforms > 1; here unit={unit!r}, codebook={codebook!r}, "
                              f"transforms={transforms!r})", value)
        return False
    for name, (value, default) in others.items():
        if value is not default and value != default:
            raise invalid(name, f"{default!r} with unit='kernel' and codebook={codebook!r} "
                          "(scaled kernel clustering does not support it)", value)
    return True
