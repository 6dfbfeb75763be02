"""The Palette record (codebook + indices + unit layout) and compressed-size accounting.

A :class:`Palette` describes one clustered weight tensor. Size accounting follows Deep
Compression (Han et al., ICLR 2016), which Deep k-Means uses (§4): for N units of dimension d
with K shared values at b = 32 bits, ``CR = N d b / (N log2 K + K d b)`` (log2 K indices),
and, as the Deep k-Means code does (``WideResNet_Deploy.py:get_compressed_memory``), with the
index histogram's entropy H for log2 K: ``CR_H = N d b / (N H + K d b)`` (entropy-coded indices).

Per-channel palettes count one codebook per channel; palettes that share a codebook (same
``codebook_id``) count it once. A palette with ``preserve_sparsity`` holds K + 1 entries per
codebook, the fixed zero (entry 0, kept for a pruned weight's exact zeros; see
:mod:`dkm_tf.core.codebook`) and K centroids: its indices cost log2(K + 1) (ceil for packed)
bits, and its codebook is counted as stored, all K + 1 entries.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core import kernel_palette as kernel_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.index_codec import pack_indices
from dkm_tf.core.kmeans import assignment_entropy, scalar_kmeans
from dkm_tf.core.kmeans_batched import cluster_groups
from dkm_tf.core.palette_checks import palette_list
from dkm_tf.core.palette_dict import palette_from_dict
from dkm_tf.core.validate import (
    check_bool,
    check_int,
    check_n_clusters,
    check_number,
    check_real_array,
    check_seed,
    invalid_type,
)

__all__ = ["INDEX_CODINGS", "Palette", "SizeReport", "cluster_tensor", "size_report"]

INDEX_CODINGS = ("log2", "packed", "entropy")
FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True, eq=False)
class Palette:
    """One clustered weight tensor.

    Attributes:
        layer_name: name of the Keras layer.
        weight_name: attribute of the weight in the layer (``"kernel"``, ``"depthwise_kernel"``).
        codebook: float32 array (G, K, d): G codebooks of K centroids of dimension d.
        indices: integer array (G, M): the centroid of each unit, stored in the smallest
            unsigned type that holds the codebook's K (uint8 for K <= 256, uint16 up to
            65,536, else int32): a quarter of the kernel's bytes at K <= 256.
        layout: the :class:`~dkm_tf.core.units.UnitLayout` that maps units to the kernel.
        requested_clusters: the K that was asked for (the codebook may hold fewer entries
            when the tensor had fewer distinct units: lossless pass-through).
        codebook_id: codebooks with the same id are shared across tensors and counted once.
        note: free text (e.g. why K is smaller than requested).
        preserve_sparsity: entry 0 of every codebook is the fixed zero that keeps a pruned
            weight's exact zeros, not one of the ``requested_clusters`` (``n_clusters`` <= K + 1).
        scales: float32 (G, M) per-unit scales of scaled kernel units (Son et al., ECCV 2018;
            :mod:`dkm_tf.core.kernel_codebook`), or None: unit n decodes to
            ``scales[n] T_t(codebook[indices[n]])``.
        transforms: integer (G, M) transform ids of transform-invariant clustering, or None.
        n_transforms: T (1, 2, 4, 8): indices cost log2 K + log2 T bits (stored index ``k + K t``).
        scale_bits: bits of one stored scale (16, 8 or 32; 0 without scales).

    ``codebook``, ``indices``, ``scales`` and ``transforms`` are the palette's own read-only
    copies; build an edited palette with ``dataclasses.replace(p, indices=...)`` (checked).
    """

    layer_name: str
    weight_name: str
    codebook: np.ndarray
    indices: np.ndarray
    layout: units_lib.UnitLayout
    requested_clusters: int | None = None
    codebook_id: str | None = None
    note: str = ""
    preserve_sparsity: bool = False
    scales: np.ndarray | None = None
    transforms: np.ndarray | None = None
    n_transforms: int = 1
    scale_bits: int = 0

    def __post_init__(self):
        for arg in ("layer_name", "weight_name"):  # a non-str name matches no layer, silently
            if not isinstance(getattr(self, arg), str):
                raise invalid_type(arg, "a str", getattr(self, arg))
        lay = self.layout
        if not isinstance(lay, units_lib.UnitLayout):
            raise TypeError(f"Invalid type for argument `layout`. Expected a UnitLayout "
                            f"(dkm_tf.layout_for). Received: {type(lay).__name__}")
        raw_cb, idx = np.asarray(self.codebook), np.asarray(self.indices)
        if raw_cb.dtype.kind not in "fiu" and raw_cb.dtype.name != "bfloat16":
            raise TypeError(f"Palette {self.name}: the codebook must be real numbers. "
                            f"Received dtype {raw_cb.dtype}.")
        if idx.dtype.kind not in "iu":
            whole = idx.dtype.kind == "f" and idx.size and np.all(np.isfinite(idx)) and np.all(
                idx == np.round(idx))
            msg = "whole numbers stored as floats; pass them as an integer array" if whole else \
                "integers"
            raise TypeError(f"Palette {self.name}: indices must be {msg}. Received dtype "
                            f"{idx.dtype}.")
        with np.errstate(over="ignore"):  # finite float64 beyond float32's range: inf
            cb = raw_cb.astype(np.float32)
        if not np.all(np.isfinite(cb)):
            big = int(np.sum(np.isfinite(raw_cb.astype(np.float64)) & ~np.isfinite(cb)))
            raise ValueError(f"Palette {self.name}: the codebook holds "
                             f"{int(np.sum(~np.isfinite(cb)))} NaN/Inf value(s)" + (
                                 f" as float32 ({big} finite ones beyond float32's range "
                                 f"+-3.403e+38)" if big else "")
                             + "; a palette must decode to finite weights.")
        if cb.ndim != 3 or cb.shape[0] != lay.n_groups or cb.shape[2] != lay.unit_dim:
            raise ValueError(f"Palette {self.name}: codebook shape {cb.shape} does not match "
                             f"(G={lay.n_groups}, K, d={lay.unit_dim}).")
        if idx.shape != (lay.n_groups, lay.n_units):
            raise ValueError(f"Palette {self.name}: indices shape {idx.shape} does not match "
                             f"(G={lay.n_groups}, M={lay.n_units}).")
        if idx.size and (idx.min() < 0 or idx.max() >= cb.shape[1]):
            raise ValueError(f"Palette {self.name}: indices must lie in [0, {cb.shape[1]}).")
        if self.preserve_sparsity:
            codebook_lib.check_zero_entry(cb, self.name)
        object.__setattr__(self, "codebook", cb)
        small = np.uint8 if (k := cb.shape[1]) <= 256 else np.uint16 if k <= 65536 else np.int32
        object.__setattr__(self, "indices", np.array(idx, small))  # own copy, not the caller's
        kernel_lib.check_palette_extras(self)  # and makes the arrays read-only

    def __reduce__(self):  # copy, deepcopy, pickle: via __init__ (checked, read-only)
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __setstate__(self, state):  # a pickle of an earlier release (default reduce): checked
        self.__init__(**state)

    # ----------------------------------------------------------------- shape facts
    @property
    def name(self):
        return f"{self.layer_name}/{self.weight_name}"

    @property
    def n_clusters(self):
        """Codebook entries per group (K, or K + 1 with ``preserve_sparsity``)."""
        return int(self.codebook.shape[1])

    @property
    def unit_dim(self):
        return self.layout.unit_dim

    @property
    def n_units(self):
        """N, units in the whole tensor (all groups)."""
        return self.layout.n_groups * self.layout.n_units

    @property
    def n_values(self):
        return self.layout.size

    @property
    def bit_width(self):
        """Bits of a fixed-length index, ceil(log2 K) (0 for K = 1)."""
        return int(math.ceil(math.log2(self.n_clusters))) if self.n_clusters > 1 else 0

    # ----------------------------------------------------------------- values
    def decode(self):
        """The kernel that the palette stands for (``codebook[indices]`` in Keras layout)."""
        if self.scales is not None or self.transforms is not None:
            return kernel_lib.decode_scaled(self.codebook, self.indices, self.layout,
                                            self.scales, self.transforms)
        return codebook_lib.decode(self.codebook, self.indices, self.layout)

    def entropy_bits(self):
        """Mean entropy of the index histogram(s), bits per index (per group, averaged)."""
        return float(np.mean([assignment_entropy(row, self.n_clusters) for row in self.indices]))

    # ----------------------------------------------------------------- sizes
    def index_bits(self, coding="log2"):
        """Index bits for ``coding`` (:data:`INDEX_CODINGS`): ``"log2"`` N log2 K, ``"packed"`` N
        ceil(log2 K), ``"entropy"`` N H (:meth:`entropy_bits`); scaled kernels: K T, + N b_s."""
        if coding not in INDEX_CODINGS:
            raise ValueError(f"Invalid value for argument `coding`. Expected one of "
                             f"{list(INDEX_CODINGS)}. Received: coding={coding!r}")
        if self.n_transforms > 1 or self.scales is not None:  # + N (log2 T + b_s), §2.5
            return kernel_lib.scaled_index_bits(self, coding, INDEX_CODINGS)
        if coding == "entropy":
            return float(sum(self.layout.n_units * assignment_entropy(r, self.n_clusters)
                             for r in self.indices))
        per = self.bit_width if coding == "packed" else math.log2(max(self.n_clusters, 1))
        return float(self.n_units * per)

    def codebook_bits(self, bits=FLOAT_BITS):
        """Bits of the stored codebook(s): G K d entries at ``bits`` each (default 32)."""
        return float(self.codebook.size * bits)

    def compressed_bits(self, coding="log2", bits=FLOAT_BITS):
        """:meth:`index_bits` for ``coding`` plus :meth:`codebook_bits` at ``bits``."""
        return self.index_bits(coding) + self.codebook_bits(bits)

    def compression_ratio(self, coding="log2", bits=FLOAT_BITS):
        """Han et al.'s r = n b / (N log2 K + G K d b), N H for entropy ``coding`` (indices as in
        :meth:`index_bits`, scales included; ``bits``: b, of a weight and a codebook entry)."""
        return self.n_values * bits / self.compressed_bits(coding, bits)

    # ----------------------------------------------------------------- serialization
    def to_dict(self):
        """A JSON-ready dict (packed indices); :meth:`from_dict` restores the palette."""
        return {"layer_name": self.layer_name, "weight_name": self.weight_name,
                "codebook": self.codebook.tolist(), "indices": pack_indices(self.indices),
                "layout": self.layout.to_config(), "requested_clusters": self.requested_clusters,
                "codebook_id": self.codebook_id, "note": self.note,
                "preserve_sparsity": self.preserve_sparsity,
                **kernel_lib.extras_to_dict(self)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict` for its dict ``d``; a missing or unknown key: ValueError."""
        return palette_from_dict(cls, d)

    def __repr__(self):
        k = f"{self.n_clusters - 1}+zero" if self.preserve_sparsity else self.n_clusters
        return (f"Palette({self.name}, K={k}, unit={self.layout.effective_unit}(d="
                f"{self.unit_dim}), {self.layout.granularity}, N={self.n_units})")


@dataclasses.dataclass(frozen=True)
class SizeReport:
    """Per-layer and whole-model compression table.

    Attributes:
        rows: one dict per palette (name, unit, d, N, K, bits, original bits, compressed bits
            with log2 K and entropy-coded indices, the two ratios). K counts codebook entries:
            K + 1 with ``preserve_sparsity`` (row key of that name), ``K+z`` in the summary.
        other_params: parameters not clustered (biases, BN, unclustered layers), at 32 bits.
        totals: dict with whole-model original / compressed bits and ratios.
    """

    rows: tuple
    other_params: int
    totals: dict

    def summary(self):
        """The table as text: one row per palette, then the clustered and whole-model CRs."""
        head = (f"{'tensor':<34}{'unit':>8}{'d':>4}{'N':>10}{'K':>6}{'bits':>5}"
                f"{'H':>6}{'CR log2K':>10}{'CR entropy':>12}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            k = f"{r['K'] - 1}+z" if r.get("preserve_sparsity") else r["K"]
            lines.append(f"{r['name'][:33]:<34}{r['unit']:>8}{r['d']:>4}{r['N']:>10}{k:>6}"
                         f"{r['bits']:>5}{r['entropy']:>6.2f}{r['cr_log2']:>10.2f}"
                         f"{r['cr_entropy']:>12.2f}")
        t = self.totals
        lines.append("-" * len(head))
        lines.append(f"clustered tensors: CR {t['cr_clustered_log2']:.2f}x (log2 K indices), "
                     f"{t['cr_clustered_entropy']:.2f}x (entropy-coded indices)")
        lines.append(f"whole model ({self.other_params:,} other params at 32 bits): "
                     f"CR {t['cr_model_log2']:.2f}x (log2 K), {t['cr_model_entropy']:.2f}x "
                     "(entropy); codebooks counted at 32 bits")
        if any(r.get("preserve_sparsity") for r in self.rows):
            lines.append("K+z: K centroids and the fixed zero entry z (preserve_sparsity)")
        return "\n".join(lines)

    def to_dict(self):
        """The report as a JSON-ready dict: ``rows``, ``other_params``, ``totals`` (copies)."""
        return {"rows": [dict(r) for r in self.rows], "other_params": self.other_params,
                "totals": dict(self.totals)}  # an edit of the dict must not change the report


def size_report(palettes, other_params=0, bits=FLOAT_BITS):
    """Compression table of a set of palettes (and the rest of the model's parameters).

    Args:
        palettes: iterable of :class:`Palette`, no palette object listed twice (ValueError).
            Two palettes of one name are kept (layers of one name in nested models); one
            weight given as two palette objects (a copy, or clustered at two K) is not
            detected and is counted twice.
        other_params: count of parameters left unclustered (kept at ``bits``).
        bits: bits of an uncompressed weight and of a codebook entry (32).

    Returns:
        A :class:`SizeReport`.
    """
    palettes = palette_list(palettes, Palette)  # one per weight: a repeat counted twice
    check_int("other_params", other_params, minimum=0)
    check_int("bits", bits, minimum=1)
    rows, seen = [], set()
    orig = comp_log2 = comp_ent = 0.0
    for p in palettes:
        shared = p.codebook_id is not None and p.codebook_id in seen
        cb = 0.0 if shared else p.codebook_bits(bits)
        if p.codebook_id is not None:
            seen.add(p.codebook_id)
        il, ie = p.index_bits("log2"), p.index_bits("entropy")
        n_bits = p.n_values * bits
        rows.append({"name": p.name, "unit": p.layout.effective_unit,
                     "granularity": p.layout.granularity, "d": p.unit_dim, "N": p.n_units,
                     "K": p.n_clusters, "bits": p.bit_width, "entropy": p.entropy_bits(),
                     "original_bits": n_bits, "compressed_bits_log2": il + cb,
                     "compressed_bits_entropy": ie + cb, "cr_log2": n_bits / max(il + cb, 1e-12),
                     "cr_entropy": n_bits / max(ie + cb, 1e-12),
                     "preserve_sparsity": p.preserve_sparsity})
        orig += n_bits
        comp_log2 += il + cb
        comp_ent += ie + cb
    other = float(other_params) * bits
    totals = {
        "original_bits": orig + other,
        "compressed_bits_log2": comp_log2 + other,
        "compressed_bits_entropy": comp_ent + other,
        "cr_clustered_log2": orig / comp_log2 if comp_log2 else 1.0,
        "cr_clustered_entropy": orig / comp_ent if comp_ent else 1.0,
        "cr_model_log2": (orig + other) / (comp_log2 + other) if comp_log2 + other else 1.0,
        "cr_model_entropy": (orig + other) / (comp_ent + other) if comp_ent + other else 1.0,
    }
    return SizeReport(tuple(rows), int(other_params), totals)


def cluster_tensor(kernel, *, kind, n_clusters, unit="scalar", granularity="per_tensor",
                   init="kmeans++", seed=0, layer_name="", weight_name="kernel", sparsity=0.0,
                   preserve_sparsity=False):
    """Cluster one weight tensor into a :class:`Palette`.

    Args:
        kernel: the Keras weight (numpy array).
        kind: layout kind (see :func:`dkm_tf.core.units.layout_for`).
        n_clusters: K per codebook.
        unit: ``"scalar"``, ``"row"`` or ``"kernel"``.
        granularity: ``"per_tensor"`` or ``"per_channel"``.
        init: k-means init (see :data:`dkm_tf.core.kmeans.INITS`).
        seed: random seed.
        layer_name: used in the palette and in error messages.
        weight_name: attribute name of the weight.
        sparsity: fraction p of units (the smallest by l2 norm, per group) assigned to a fixed
            all-zero centroid, the other units clustered into K - 1 centroids: the sharing
            step of Deep k-Means' sparsity-promoting variant (Wu et al., ICML 2018, §4.1.4).
        preserve_sparsity: keep the kernel's exact zeros: they go to a fixed zero entry 0
            on top of K centroids of the non-zero units (see :mod:`dkm_tf.core.codebook`).
            Unlike ``sparsity`` it creates no zeros; the two cannot be combined.

    Returns:
        A :class:`Palette`. A group with fewer distinct units than K gets them (lossless),
        padded by repeating the last; K' = the most any group has (``note`` when K' < K)."""
    kernel = check_real_array("kernel", kernel)
    check_n_clusters(n_clusters)
    check_seed(seed)
    check_bool("preserve_sparsity", preserve_sparsity)
    check_number("sparsity", sparsity, "a fraction in [0, 1)", low=0, high=1, high_open=True)
    layout = units_lib.layout_for(kernel.shape, kind, unit, granularity)
    # one scalar codebook: k-means reads the kernel in unit order (a view), no copy of it
    one_scalar_book = (layout.n_groups == 1 and layout.unit_dim == 1 and not sparsity
                       and not preserve_sparsity)
    units = None if one_scalar_book else units_lib.to_units(kernel, layout)
    label = f"{layer_name}/{weight_name}" if layer_name else weight_name
    if not 0.0 <= sparsity < 1.0:
        raise ValueError("Invalid value for argument `sparsity`. Expected a fraction in [0, 1). "
                         f"Received: sparsity={sparsity}")
    if sparsity > 0 and n_clusters < 2:
        raise ValueError("sparsity > 0 needs n_clusters >= 2 (one centroid is the fixed zero). "
                         f"Received: n_clusters={n_clusters}")
    if preserve_sparsity:
        if sparsity > 0:
            raise ValueError("Invalid value for argument `sparsity`. Expected 0 with "
                             "preserve_sparsity=True (one keeps existing zeros, the other "
                             f"creates zeros). Received: sparsity={sparsity}")
        cb, idx, used = codebook_lib.kmeans_keeping_zeros(units, n_clusters, init=init,
                                                          seed=seed, name=label)
        note = (f"only {used - 1} distinct non-zero units (<= n_clusters={n_clusters}): "
                "lossless" if used <= n_clusters else "")
        return Palette(layer_name, weight_name, cb[:, :used], idx, layout,
                       requested_clusters=int(n_clusters), note=note, preserve_sparsity=True)
    g_all, m, d = layout.n_groups, layout.n_units, layout.unit_dim
    n_zero = int(sparsity * m)
    if one_scalar_book:
        cb, idx = scalar_kmeans(np.transpose(kernel, layout.perm), n_clusters, init=init,
                                seed=seed, name=label)
        cb, idx = cb.reshape(1, -1, 1), idx.reshape(1, -1)
    elif n_zero:  # per group, the n_zero smallest units share the fixed zero centroid
        zero = np.zeros((g_all, m), bool)
        smallest = np.argsort(np.sum(units.astype(np.float64) ** 2, axis=2), axis=1,
                              kind="stable")[:, :n_zero]
        np.put_along_axis(zero, smallest, True, axis=1)
        cb, sub = cluster_groups(units[~zero].reshape(g_all, m - n_zero, d), n_clusters - 1,
                                 init=init, seed=seed, name=label)
        cb = np.concatenate([np.zeros((g_all, 1, d), np.float32), cb], axis=1)
        idx = np.zeros((g_all, m), np.int32)
        idx[~zero] = (sub + 1).ravel()
    else:  # scalar units of many groups: one batched k-means (dkm_tf.core.kmeans_batched)
        cb, idx = cluster_groups(units, n_clusters, init=init, seed=seed, name=label)
    note = codebook_lib.short_codebook_note(cb, idx, lambda: units_lib.to_units(
        kernel, layout), n_clusters, zero if n_zero else None)  # lossless only if it is
    return Palette(layer_name, weight_name, cb, idx, layout,
                   requested_clusters=int(n_clusters), note=note)
