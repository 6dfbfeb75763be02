"""Export a clustered Keras model to ``.tflite``: float, fp16, int8, palettized or TFLite Micro.

Every export converts, runs the written model on sample inputs in the LiteRT interpreters,
compares it with the Keras model, refuses to write a model that disagrees, and writes the file
atomically (temporary file in the same directory, then ``os.replace``).

Palettized storage, worked example. A Dense kernel (2 inputs x 3 outputs) clustered to K=4::

    weights  [[0.5, -1, 0.25],       codebook (LUT)  [-1, 0, 0.25, 0.5]
              [0,    0, -1  ]]  ->   indices         [[3, 0, 2],
                                                      [1, 1, 0]]

In TFLite's FULLY_CONNECTED layout ([out, in]) the indices read ``3 1 0 1 2 0``.
``decode="once"`` packs them base K, up to g = 7 per int16 for K = 4: one int16
``3 + 1*4 + 0*16 + 1*64 + 2*256 + 0*1024 = 583``, expanded by GATHERs when the interpreter
allocates its tensors. ``decode="per_invoke"`` stores INT2 fields ``q = i - 2``, low bits first:
bytes ``0xED 0x08``, expanded on every invoke (DEQUANTIZE, CAST, GATHER): the smallest file.
(It uses int16 base-K tuples split by FLOOR_DIV/FLOOR_MOD instead when they are denser than the
INT2/INT4/uint8 fields, e.g. 3 indices per int16 = 5.33 bits for K = 32.)
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np

from dkm_tf.core.files import atomic_path
from dkm_tf.core.validate import check_choice
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import verify
from dkm_tf.export.inspect import inspect_tflite
from dkm_tf.export.palettize import DECODE_MODES, check_keep_float, palettize_flatbuffer
from dkm_tf.export.rewrite import FlatModel

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "INT8_MODES", "ExportReport", "to_tflite"]

FORMATS = ("float", "fp16", "palettized", "int8", "tflm")
INT8_MODES = ("dynamic", "full")
# allowed max |tflite - keras| / max |keras|, per format. Float-exact formats guard the
# rewrite itself; the quantized ones only catch broken exports (their error is quantization).
DEFAULT_TOLERANCE = {"float": 1e-5, "fp16": 2e-2, "palettized": 1e-4, "int8/dynamic": 1e-1,
                     "int8/full": 2.5e-1, "tflm": 1e-4}


@dataclasses.dataclass
class ExportReport:
    """What an export wrote and how well it agrees with Keras.

    Attributes:
        path: the written file.
        format: ``"float"``, ``"fp16"``, ``"palettized"``, ``"int8"`` or ``"tflm"``.
        variant: decode mode (palettized), int8 mode, or ``""``.
        bytes: file size; ``gzip_bytes``: its ``gzip -9`` size.
        float_bytes: size of the plain float conversion of the same model.
        analytic_bytes: size predicted from the parameter counts and palettes (indices,
            codebooks, decode tables, float parameters at their stored width) plus
            ``graph_bytes``; the ops and tensors a format adds (decode chains, im2col) are the
            only part left out, a few hundred bytes per palettized tensor.
        n_params: parameters of the Keras model.
        tensors: per-tensor storage (one dict per clustered or weight tensor).
        graph_bytes: the float conversion's bytes beyond its weights (ops, tensor names and
            shapes, metadata), measured, not predicted.
        comparisons: one :class:`~dkm_tf.export.verify.Comparison` per interpreter.
        notes: free-text remarks (synthesized inputs, fallbacks, ...).
        latency: filled by :func:`~dkm_tf.export.export_all` when asked.
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
        name = self.format + (f"/{self.variant}" if self.variant else "")
        lines = [f"{name}: {self.path}",
                 f"  {self.bytes:,} B ({self.ratio_vs_float:.4f}x float {self.float_bytes:,} B),"
                 f" gzip {self.gzip_bytes:,} B, {self.bits_per_weight:.2f} bits/weight, "
                 f"analytic {self.analytic_bytes:,} B"]
        for c in self.comparisons:
            lines.append(f"  {c.interpreter:<7} max abs err {c.max_abs_error:.3g}, rel "
                         f"{c.rel_error:.3g} (tolerance {c.tolerance:g}) over {c.n_samples} "
                         "samples")
        for t in self.tensors:
            extra = "".join(f", {k}={t[k]}" for k in ("route", "int8_distinct_per_channel",
                                                       "clusters_survive") if k in t)
            lines.append(f"  {t.get('palette', t.get('name', '?'))[:40]:<40} "
                         f"{t.get('storage', t.get('dtype', '')):<26} "
                         f"{t.get('bits_per_weight', float('nan')):6.2f} b/w{extra}")
        lines += [f"  note: {n}" for n in self.notes]
        for k, v in self.latency.items():
            lines.append(f"  latency {k}: median {v['median_ms']:.3f} ms")
        return "\n".join(lines)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["comparisons"] = [c.to_dict() for c in self.comparisons]
        d.update(ratio_vs_float=self.ratio_vs_float, bits_per_weight=self.bits_per_weight,
                 max_rel_error=self.max_rel_error)
        return d


def _check_path(path):
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"Invalid value for argument `path`. Expected a file path. Received "
                         f"a directory: path={path!r}")
    if not os.path.isdir(d):
        raise ValueError(f"Invalid value for argument `path`. Its directory does not exist. "
                         f"Received: path={path!r}")
    if not os.access(d, os.W_OK):
        raise PermissionError(f"Cannot write {path!r}: directory {d!r} is not writable.")
    return path


def write_atomic(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def check_palettes(model, palettes):
    """Validate that each palette names a weight of ``model`` that equals ``palette.decode()``.

    Raises:
        TypeError: ``palettes`` is not a list of Palette objects.
        ValueError: a layer or weight is missing, or shape or values differ.
    """
    from dkm_tf.core.palette import Palette  # noqa: PLC0415

    if not isinstance(palettes, (list, tuple)) or not all(isinstance(p, Palette)
                                                          for p in palettes):
        raise TypeError("Invalid type for argument `palettes`. Expected a list of "
                        f"dkm_tf.Palette. Received: {type(palettes).__name__}")
    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415 (imports keras)

    layers = {}
    for layer in walk_layers(model):
        layers.setdefault(layer.name, layer)
    for p in palettes:
        layer = layers.get(p.layer_name)
        var = getattr(layer, p.weight_name, None) if layer is not None else None
        if var is None:
            raise ValueError(f"Palettes do not match the model: palette {p.name!r} names no "
                             f"weight of model {model.name!r} (layers: "
                             f"{sorted(layers)[:12]}...).")
        w = np.asarray(var)
        if tuple(w.shape) != tuple(p.layout.kernel_shape):
            raise ValueError(f"Palettes do not match the model: {p.name!r} has shape "
                             f"{p.layout.kernel_shape}, the model's weight {tuple(w.shape)}.")
        err = float(np.max(np.abs(w - p.decode()))) if w.size else 0.0
        if err > 1e-6 * max(1.0, float(np.max(np.abs(w)))):
            raise ValueError(f"Palettes do not match the model: weight {p.name!r} differs from "
                             f"palette.decode() by up to {err:.3g}. Assign the decoded values "
                             "(or strip the clustered model) before exporting.")


def _int8_survival(content, palettes):
    """Per palette: distinct int8 values per channel vs distinct clustered values."""
    from dkm_tf.export.palettize import tflite_layouts  # noqa: PLC0415

    fm = FlatModel.from_bytes(content)
    int8 = [t for t in range(len(fm.tensors)) if fm.type_name(t) == "int8" and fm.raw(t)]
    rows = []
    for p in palettes:
        kernel = p.decode().astype(np.float32)
        hit = None
        for _ops, tperm, tshape in tflite_layouts(p.layout):
            ref = kernel.transpose(tperm).reshape(tshape)
            for t in int8:
                q = fm.tensors[t].quantization
                if fm.shape(t) != tuple(tshape) or q is None or q.scale is None:
                    continue
                axis = int(q.quantizedDimension or 0)
                scale = np.asarray(q.scale, np.float64)
                shp = [1] * ref.ndim
                shp[axis] = -1 if scale.size > 1 else 1
                deq = fm.const(t).astype(np.float64) * scale.reshape(shp)
                if np.max(np.abs(deq - ref)) <= 0.51 * float(scale.max()):
                    hit = (t, axis, ref)
                    break
            if hit:
                break
        if hit is None:
            rows.append({"palette": p.name, "storage": "float32 (not quantized by converter)",
                         "K": p.n_clusters, "bits_per_weight": 32.0})
            continue
        t, axis, ref = hit
        q = np.moveaxis(fm.const(t), axis, 0).reshape(fm.shape(t)[axis], -1)
        f = np.moveaxis(ref, axis, 0).reshape(q.shape)
        per_q = [np.unique(r).size for r in q]
        per_f = [np.unique(r).size for r in f]
        rows.append({"palette": p.name, "tensor": fm.tensor_name(t), "storage": "int8",
                     "K": p.n_clusters, "bits_per_weight": 8.0,
                     "int8_distinct_total": int(np.unique(q).size),
                     "int8_distinct_per_channel": int(max(per_q)),
                     "float_distinct_per_channel": int(max(per_f)),
                     "merged_channels": int(sum(a < b for a, b in zip(per_q, per_f))),
                     "clusters_survive": bool(all(a == b for a, b in zip(per_q, per_f)))})
    return rows


def _analytic(model, fmt, variant, records, palettes):
    """Bytes predicted from parameter counts and palettes (no look at the file)."""
    n_total = int(model.count_params())
    if fmt == "float":
        return 4 * n_total
    if fmt == "fp16":
        return 2 * n_total
    if fmt in ("palettized", "tflm"):
        pal = sum(r["n_weights"] for r in records)  # kept float32 ones count 4 B/weight
        return int(sum(r["index_bytes"] + r["codebook_bytes"] + r.get("aux_bytes", 0)
                       for r in records) + 4 * (n_total - pal))
    from dkm_tf.graph.clusterable import clusterable_weights, walk_layers  # noqa: PLC0415

    total = 4 * n_total
    for layer in walk_layers(model):
        try:
            weights = clusterable_weights(layer)
        except (TypeError, ValueError):
            continue
        for _name, var, _kind in weights:
            n = int(np.prod(var.shape))
            if variant == "full" or n >= 1024:  # the dynamic-range quantizer skips small ones
                total -= 3 * n - 12 * int(var.shape[-1])  # int8 + per-channel scale/zero point
    return total


def to_tflite(model, path, format="palettized", palettes=None, sample_inputs=None, *,  # noqa: A002
              decode="once", int8_mode="dynamic", representative_data=None, tolerance=None,
              interpreters=None, max_table_bytes=1 << 20, matmul_lowering=True,
              keep_float="auto", float_content=None):
    """Convert ``model`` to a verified ``.tflite`` file and report its storage.

    Args:
        model: built Keras 3 model whose clustered weights equal ``palette.decode()``.
        path: output file (written atomically, only after verification).
        format: ``"float"`` (plain conversion, dense float storage), ``"fp16"``,
            ``"palettized"`` (codebook + packed indices, builtin ops only), ``"int8"``
            (``int8_mode="dynamic"`` or ``"full"``) or ``"tflm"`` (TFLite Micro LUT).
        palettes: list of :class:`~dkm_tf.core.palette.Palette`; required for ``palettized`` and
            ``tflm``, optional for ``int8`` (adds the distinct-values report).
        sample_inputs: array (or list of arrays per input) with a leading sample axis, used
            for verification (and calibration); 8 seeded normal samples when None (noted).
        decode: ``"once"`` (decoded at load; XNNPACK-friendly layers; int16 tuple indices) or
            ``"per_invoke"`` (``ceil(log2 K)``-bit INT2/INT4 fields, decoded each invoke).
        int8_mode: ``"dynamic"`` (int8 weights) or ``"full"`` (int8 weights and activations).
        representative_data: calibration inputs for ``int8_mode="full"`` (default: samples).
        tolerance: allowed ``max|tflite - keras| / max|keras|``; default per format in
            :data:`DEFAULT_TOLERANCE`.
        interpreters: which of ``"litert"`` and ``"tflite"`` verify the file (default: both,
            or ``tf.lite`` alone when ``ai_edge_litert`` is not installed, with a note).
        max_table_bytes: RAM cap of one decode table (``once``).
        matmul_lowering: with ``once``, rewrite convs/dense layers to BATCH_MATMUL.
        keep_float: with ``once``, clustered weights left as float32 constants so XNNPACK's
            CONV_2D runs them: ``"auto"`` keeps small convolutions (<= 32,768 weights) whose
            im2col would copy more values per invoke than they have weights (on LeNet-5 this
            takes ``once`` from 1.5x to about 1.15x float latency for +0.04x float size);
            ``None`` palettizes every tensor; or a list of layer names. Kept tensors are
            reported with ``storage="float32 (kept)"``.
        float_content: the float conversion's bytes, if already available (saves a convert).

    Returns:
        An :class:`ExportReport`.

    Raises:
        ValueError: bad argument, palettes not matching the model, model with ops TFLite
            builtins lack, or unwritable path (``PermissionError``).
        ExportVerificationError: the written model disagrees with Keras (nothing written).

    Example:
        >>> report = to_tflite(plain, "m.tflite", "palettized", palettes,
        ...                    x_test[:8])  # doctest: +SKIP
        >>> report.ratio_vs_float, report.tensors[0]["storage"]  # doctest: +SKIP
        (0.176, 'int16 (3 indices/int16)')
    """
    check_choice("format", format, FORMATS)
    check_choice("decode", decode, DECODE_MODES)
    check_choice("int8_mode", int8_mode, INT8_MODES)
    litert_missing = interpreters is None and not verify.litert_available()
    interpreters = tuple(verify.default_interpreters() if interpreters is None else interpreters)
    for kind in interpreters:
        check_choice("interpreters", kind, verify.INTERPRETERS[:2])
    path = _check_path(path)
    if format in ("palettized", "tflm") and not palettes:
        raise ValueError(f"Invalid value for argument `palettes`. format={format!r} needs the "
                         "palettes of the clustered weights. Received: palettes="
                         f"{palettes!r}")
    if palettes:
        check_palettes(model, palettes)
    if format == "palettized" and decode == "once":
        check_keep_float(keep_float, palettes)
    notes = []
    if litert_missing:
        notes.append("ai_edge_litert not installed (pip install dkm-tf[litert]): verified "
                     "with tf.lite.Interpreter only")
    specs = convert_lib.input_specs(model, sample_inputs)
    if sample_inputs is None:
        inputs = convert_lib.synthesize_inputs(specs)
        notes.append("no sample_inputs given: verified on 8 seeded standard-normal inputs")
    else:
        inputs = convert_lib.as_input_list(sample_inputs)
    reference = verify.keras_outputs(model, inputs)
    if float_content is None:
        float_content = convert_lib.convert(model, specs, "none")
    variant, records = "", []
    if format == "float":
        content = float_content
    elif format == "fp16":
        content = convert_lib.convert(model, specs, "fp16")
    elif format == "int8":
        variant = int8_mode
        content = convert_lib.convert(model, specs, int8_mode,
                                      representative_data or inputs)
        records = _int8_survival(content, palettes) if palettes else []
    elif format == "palettized":
        variant = decode
        fm = FlatModel.from_bytes(float_content)
        records = palettize_flatbuffer(fm, palettes, decode, max_table_bytes=max_table_bytes,
                                       matmul_lowering=matmul_lowering, keep_float=keep_float)
        content = fm.to_bytes()
        if any(r["transpose_per_invoke"] for r in records):
            notes.append("some weights need a TRANSPOSE on every invoke (layout not reachable "
                         "by index permutation); see tensors[*].transpose_per_invoke")
    else:
        from dkm_tf.export.tflm import tflm_compress  # noqa: PLC0415

        content, records = tflm_compress(float_content, palettes)
        interpreters = ("tflm",)
    notes += [f"{r['palette']}: palettized storage ({r['bits_per_weight']:.1f} bits/weight) is "
              "larger than float32 (too few weights per codebook)"
              for r in records if r.get("bits_per_weight", 0) >= 32 and "palette" in r
              and not r.get("kept")
              and format in ("palettized", "tflm")]
    key = f"int8/{int8_mode}" if format == "int8" else format
    tol = DEFAULT_TOLERANCE[key] if tolerance is None else float(tolerance)
    comparisons = [verify.compare(reference, content, inputs, kind, tol)
                   for kind in interpreters]
    bad = [c for c in comparisons if not c.ok]
    if bad:
        raise verify.ExportVerificationError(
            f"Refusing to write {path!r}: the {format} model disagrees with the Keras model: "
            + "; ".join(f"{c.interpreter}: max abs error {c.max_abs_error:.3g}, relative "
                        f"{c.rel_error:.3g} > tolerance {c.tolerance:g}" for c in bad))
    write_atomic(path, content)
    if not records:
        info = inspect_tflite(content)
        records = [{"name": t["name"], "dtype": t["dtype"], "storage": t["dtype"],
                    "bytes": t["bytes"], "distinct": t["distinct"],
                    "bits_per_weight": 8.0 * t["bytes"] / max(1, int(np.prod(t["shape"])))}
                   for t in info.tensors if t["role"] == "weight"]
    n_params = int(model.count_params())
    graph = max(0, len(float_content) - 4 * n_params)
    return ExportReport(path, format, variant, len(content), len(gzip.compress(content, 9)),
                        len(float_content),
                        _analytic(model, format, variant, records, palettes) + graph,
                        n_params, records, comparisons, notes, graph_bytes=graph)
