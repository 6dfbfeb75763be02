"""``dkm-tf compress --overrides``: per-layer settings, as inline JSON or a .json file.

``--overrides '{"conv1": {"n_clusters": 8}, "fc2": null}'`` gives layer (or layer class)
``conv1`` K = 8 and leaves ``fc2`` float; the same object may sit in a file
(``--overrides layers.json``). They are the ``overrides`` of :func:`dkm_tf.compress`, checked
in two steps before any training or k-means, each error a
:class:`~dkm_tf.cli_args.CliUsageError` naming --overrides:

1. :func:`check_compress_args` (:func:`parse_overrides`, :func:`check_overrides_flag`), from
   the flags alone, before the model loads: the JSON (line and column of a syntax error; no
   duplicate key, which JSON would resolve silently to the last; no NaN), an object of
   ``{name: null | {settings}}``, the option names the method takes and their values (the
   library's own settings checks);
2. :func:`check_model_overrides`, once the model is loaded or built: every key names a layer
   or layer class of it, close matches suggested
   (:func:`dkm_tf.pipeline_args.check_method_overrides`, which :func:`dkm_tf.compress` runs).
"""

from __future__ import annotations

import inspect
import json
import os

from dkm_tf import cli_args
from dkm_tf.cli_args import MAX_CLUSTERS, CliUsageError
from dkm_tf.core.files import is_home_tilde

# the per-layer settings the command offers (``latent`` of cluster_weights is left out: the
# command never re-assigns clusters, so a latent kernel would train but never be read)
OPTIONS = ("n_clusters", "unit", "granularity", "init", "sparsity", "preserve_sparsity")
EXAMPLE = """'{"conv1": {"n_clusters": 8}, "fc2": null}'"""
HELP = ("Per-layer settings: a JSON object, inline or the path of a .json file, keyed by layer "
        "name or layer class name; each value null (leave the layer float) or an object of "
        f"{', '.join(OPTIONS)} (sparsity: --method wr or dkm only), e.g. --overrides "
        f"{EXAMPLE} (conv1 gets K=8, fc2 stays float; report.json's rows give each tensor's K).")
_SHAPE = "a JSON object {layer or class name: null or {setting: value}}"


def _shown(text, limit=120):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise CliUsageError("overrides", f"{_SHAPE} naming each layer once (JSON keeps only "
                                "the last of duplicate keys)", f"{key!r} twice")
        seen[key] = value
    return seen


def _no_constant(name):
    raise CliUsageError("overrides", "JSON numbers (JSON has no NaN or Infinity)", name)


def _read(value):
    """``(text, where)``: inline JSON, or the contents of the .json file ``value`` names."""
    if value.lstrip().startswith("{"):
        return value, "inline JSON"
    path = os.path.expanduser(value) if is_home_tilde(value) else value  # not ~user/...
    if not value.strip() or not path.lower().endswith(".json"):
        raise CliUsageError("overrides", "a JSON object (text starting with '{') or the path "
                            "of a .json file", value)
    if not os.path.exists(path):
        raise CliUsageError("overrides", "an existing .json file (or inline JSON starting "
                            "with '{')", value)
    if not os.path.isfile(path):
        raise CliUsageError("overrides", "a .json file, not a folder", value)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM (Windows editors) is skipped
            return f.read(), path
    except (OSError, UnicodeDecodeError) as e:
        raise CliUsageError("overrides", "a readable UTF-8 .json file",
                            f"{value} ({type(e).__name__}: {_shown(e)})") from None


def parse_overrides(value):
    """``--overrides`` as a dict (None: none given). ``value``: the flag's text (inline JSON
    when it starts with ``{``, else the path of a .json file), or a dict (Python callers of
    :func:`dkm_tf.cli.run_compress`). Checks the form only; :func:`check_overrides_flag`
    checks the settings."""
    if value is None:
        return None
    if isinstance(value, str):
        text, where = _read(value)
        try:
            value = json.loads(text, object_pairs_hook=_no_duplicates,
                               parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise CliUsageError("overrides", f"valid JSON ({_SHAPE})",
                                f"{_shown(text) if where == 'inline JSON' else where}: {e.msg} "
                                f"at line {e.lineno}, column {e.colno}") from None
        received = text if where == "inline JSON" else where
    else:
        received = value
    if not isinstance(value, dict):
        raise CliUsageError("overrides", f"{_SHAPE} at the top level",
                            f"{type(value).__name__}: {_shown(received)}")
    for key, entry in value.items():
        if not isinstance(key, str) or not key:
            raise CliUsageError("overrides", "keys that are layer or layer class names "
                                "(non-empty strings)", key)
        if entry is not None and not isinstance(entry, dict):
            raise CliUsageError("overrides", f'null or an object of settings for "{key}" '
                                f"(e.g. {EXAMPLE})", f"{key}: {_shown(json.dumps(entry))}")
    return dict(value)


def check_compress_args(model_path=None, *, overrides=None, **kwargs):
    """:func:`dkm_tf.cli_args.check_compress_args` (``kwargs``: its arguments), then
    ``overrides`` (the --overrides text, or a dict): returns them parsed and checked against
    the flags (:func:`check_overrides_flag`, with the method the run will use), or None."""
    cli_args.check_compress_args(model_path, **kwargs)
    if overrides is None:
        return None
    overrides = parse_overrides(overrides)
    bound = inspect.signature(cli_args.check_compress_args).bind(model_path, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    labelled = None if a["dataset"] is None else cli_args._dataset(a["dataset"])
    method = a["method"] or default_method(model_path, labelled,
                                           a["weighting"] != "none" or a["refine"] != "none")
    check_overrides_flag(overrides, method, a)
    return overrides


def default_method(model_path, labelled, calibrated):
    """The method of ``dkm-tf compress`` without --method: ``wr`` for --refine / --weighting
    (``calibrated``) or a --model without labelled --dataset (``labelled``), else
    ``finetune``."""
    return "wr" if calibrated or (model_path is not None and not labelled) else "finetune"


def _flags_args(flags):
    return {k: flags[k] for k in ("n_clusters", "unit", "granularity", "init")}


def check_overrides_flag(overrides, method, flags):
    """Check the parsed ``overrides`` against the flags (``flags``: n_clusters, unit,
    granularity, init, codebook, transforms, weighting, refine; ``method`` resolved) before
    the model loads: option names the method takes, each entry's values (the library's
    settings checks, and K <= 65,536 as --n_clusters), and what the method would ignore."""
    if not overrides:
        return
    route = flags["unit"] == "kernel" and (flags["codebook"] != "layer"
                                           or flags["transforms"] != 1)
    for key, entry in overrides.items():
        if route and entry is not None:  # dkm_tf.graph.kernel_share: K is per codebook
            raise CliUsageError("overrides", f"only null entries with --unit kernel --codebook "
                                f"{flags['codebook']} --transforms {flags['transforms']} (its "
                                "codebooks span layers, so K and the rest are per codebook; "
                                "null leaves a layer float)", f"{key}: {_shown(entry)}")
    from dkm_tf.graph.share import check_override_options  # noqa: PLC0415
    from dkm_tf.pipeline_args import (  # noqa: PLC0415
        check_regularizer_overrides,
        override_settings,
    )

    settings, check = override_settings(method, _flags_args(flags))
    allowed = [o for o in OPTIONS if o in settings]
    weighting, refine = (None if flags[f] == "none" else flags[f] for f in ("weighting", "refine"))
    for key, entry in overrides.items():
        unknown = sorted(set(entry or ()) - set(allowed), key=str)
        if unknown:
            why = (" (sparsity: --method wr or dkm only; fine-tuning keeps no zero centroid)"
                   if "sparsity" in unknown else "")
            raise CliUsageError("overrides", f'option names among {allowed} in "{key}" with '
                                f"--method {method}{why}", unknown[0] if len(unknown) == 1
                                else unknown)
        k = (entry or {}).get("n_clusters")
        if isinstance(k, int) and not isinstance(k, bool) and k > MAX_CLUSTERS:
            raise CliUsageError("overrides", f'n_clusters in [1, {MAX_CLUSTERS}] in "{key}" '
                                "(as --n_clusters)", k)
        try:
            if entry:
                check({**settings, **entry})
            check_regularizer_overrides(method, {key: entry}, settings)
            if weighting or refine:
                check_override_options(settings, {key: entry}, weighting, refine)
        except (TypeError, ValueError) as e:
            raise CliUsageError("overrides", f'valid settings in "{key}" with --method '
                                f"{method} ({_shown(e, 400)})", entry) from None


def check_model_overrides(model, overrides, method, flags):
    """Once the model is loaded or built, before any training or k-means: every key of
    ``overrides`` names a layer or layer class of ``model`` (close matches suggested), and
    each entry applies to a layer that is clustered: the checks of :func:`dkm_tf.compress`
    (:func:`dkm_tf.pipeline_args.check_method_overrides`), as a usage error. With --tflite,
    also that no two clustered layers share a name (layers of different nested models): the
    palettized export matches palettes to layers by name and refuses such a model, which
    the run found only after the whole training and k-means."""
    if flags.get("tflite"):
        _check_export_names(model, overrides)
    if not overrides:
        return
    from dkm_tf.pipeline_args import check_method_overrides  # noqa: PLC0415

    try:
        check_method_overrides(model, overrides, method, _flags_args(flags))
    except (TypeError, ValueError) as e:
        raise CliUsageError("overrides", f"keys naming layers or layer classes of model "
                            f"{model.name!r} that it clusters ({_shown(e, 600)})",
                            sorted(overrides)) from None


def _check_export_names(model, overrides):
    """Raise a usage error naming the layers if clustered layers of ``model`` share a name."""
    from dkm_tf.graph import clusterable  # noqa: PLC0415
    from dkm_tf.graph.layer_names import duplicated_names, where  # noqa: PLC0415

    for name, layers in sorted(duplicated_names(model).items()):
        clustered = [lay for _, lay in layers if clusterable.is_clusterable(lay)
                     and not clusterable.skipped_by_overrides(lay, overrides or {})]
        if len(clustered) > 1:
            raise CliUsageError(
                "tflite", "a model whose clustered layers have distinct names (the palettized "
                "export matches palettes to layers by name and refuses the model after the "
                "training); rename the nested models' layers, or pass --notflite",
                f"{len(layers)} layers named {name!r} at {where(layers)}")
