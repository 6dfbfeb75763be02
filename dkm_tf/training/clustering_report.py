"""The report of :func:`dkm_tf.cluster_weights` (``return_report=True``)."""

from __future__ import annotations

import dataclasses

from dkm_tf.graph.bn_fate import folded_line
from dkm_tf.training.wrapper_extras import FROZEN_NOTE

__all__ = ["ClusteringReport"]


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
