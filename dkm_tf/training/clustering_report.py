"""The report of :func:`dkm_tf.cluster_weights` (``return_report=True``)."""

from __future__ import annotations

import dataclasses
import warnings

from dkm_tf.graph import bn_fate
from dkm_tf.graph.bn_fate import folded_line
from dkm_tf.graph.untracked import UNTRACKED
from dkm_tf.training.wrapper_extras import FROZEN_NOTE

__all__ = ["KEPT", "ClusteringReport", "kept_reason", "warn_unclustered"]

KEPT = "already clustered (kept as it is"


@dataclasses.dataclass(frozen=True)
class ClusteringReport:
    """What :func:`cluster_weights` did to each layer with weights.

    Attributes:
        clustered: tuples ``(layer_name, layer_type, settings)`` of wrapped layers; settings'
            ``unit_used`` says the unit each weight got (a Dense kernel's "row" is a scalar),
            ``frozen`` that the layer was not trainable (its codebook will not train).
        skipped: tuples ``(layer_name, layer_type, reason)`` of layers left as they are; a
            BatchNormalization listed here stays float at strip, the reason says why (after a
            ``Concatenate``, at a block's input, after an activation, ...).
        folded: tuples ``(layer_name, bn_name)``: BatchNormalization layers that are not
            clustered but that :func:`strip_clustering` (``fold_bn=True``) folds into the
            layer before them, as ``share_weights``' ``folded`` (not skips).
    """

    clustered: tuple
    skipped: tuple
    folded: tuple = ()

    def summary(self):
        """The report as text: one ``+`` line per clustered layer, one ``-`` per skipped one,
        one ``=`` per BatchNormalization folded at strip."""
        lines = [f"clustered {len(self.clustered)} layer(s), skipped {len(self.skipped)}"
                 + (f", {len(self.folded)} BatchNormalization layer(s) fold at strip"
                    if self.folded else "")]
        for name, kind, s in self.clustered:
            lines.append(f"  + {name} ({kind}): K={s['n_clusters']}, "
                         f"{s.get('unit_used', s['unit'])}, {s['granularity']}, "
                         f"init={s['init']}" + (", latent" if s.get("latent") else "")
                         + (f"; {FROZEN_NOTE}" if s.get("frozen") else "")
                         + ("; LoRA merged into the kernel" if s.get("lora_merged") else ""))
        for name, kind, reason in self.skipped:
            lines.append(f"  - {name} ({kind}): {reason}")
        lines += [folded_line(layer, bn) for layer, bn in self.folded]
        return "\n".join(lines)


def kept_reason(wrapper, asked):
    """The skip reason of a ``ClusterWeights`` met by ``cluster_weights``: kept as it is, and
    which of the settings ``asked`` for it (a LayerConfig, or None) it does not have."""
    if asked is None:  # overrides say None: it stays as it is all the same
        return KEPT + ")"
    differ = [f"{key}={getattr(wrapper, key)!r}, not {asked[key]!r}"
              for key in ("n_clusters", "unit", "granularity")
              if asked.get(key) is not None and getattr(wrapper, key) != asked[key]]
    return KEPT + (f": {', '.join(differ)}; strip_clustering(model) first to re-cluster "
                   "it)" if differ else ")")


def warn_unclustered(skipped, folded, unsupported_prefix):
    """One warning listing the layers with weights ``cluster_weights`` left unclustered (types
    not supported, BatchNormalization left float or folded at strip, wrappers kept with other
    settings than asked); nothing when there are none."""
    unsupported = [f"{n} ({k}{r[len(unsupported_prefix):].partition('. To')[0]})"
                   for n, k, r in skipped if r.startswith(unsupported_prefix)]
    parts = [(what, names) for what, names in (
        ("their type is not supported", unsupported),
        ("BatchNormalization that strip_clustering cannot fold (they stay float; the report "
         "says why)", [f"{n} ({k})" for n, k, r in skipped if r.startswith(bn_fate.STAYS_FLOAT)]),
        ("BatchNormalization that strip_clustering folds into the layer before them (not a "
         "skip: report.folded)", [f"{b} (BatchNormalization) into {a}" for a, b in folded]))
        if names]
    hint = bool(parts) and (len(parts) > 1 or not folded)  # on_unsupported="error" refuses
    kept = [f"{n} ({r[len(KEPT) + 2:r.index(';')]})" for n, _, r in skipped
            if r.startswith(KEPT + ":")]
    untracked = [f"{n} ({k})" for n, k, r in skipped if r.startswith(UNTRACKED)]
    if untracked:  # not in the graph: fit does not train it either (graph.untracked)
        parts.append((f"called inside a Lambda but {UNTRACKED} (they stay float and fit does "
                      "not train them; the report says where)", untracked))
    if kept:
        parts.append(("already clustered with other settings than asked, kept as they are "
                      "(strip_clustering(model) first to re-cluster them)", kept))
    if parts:
        warnings.warn(f"cluster_weights left {sum(len(n) for _, n in parts)} layer(s) with "
                      "weights unclustered: " + "; ".join(f"{w}: {', '.join(n)}" for w, n in parts)
                      + (". Pass on_unsupported='error' to fail instead." if hint else "."),
                      stacklevel=3)
