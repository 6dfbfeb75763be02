"""What ``dkm-tf compress`` prints besides the compression table: the legends under its
tables, the table of the exported formats (and why ``palettized`` keeps some tensors
float32), and the filters that keep TensorFlow's and the LiteRT runtimes' log lines out of
the output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import textwrap

from dkm_tf.core import std_fds

__all__ = ["ENERGY_LEGEND", "PT_LEGEND", "RUNTIMES", "SIZE_LEGEND", "TARGETS", "TFLITE_LEGEND",
           "import_tensorflow_quietly", "json_text", "keras_line", "native_stderr_filtered",
           "size_legend", "table_runtime",
           "tflite_table"]

TARGETS = ("float", "int8", "palettized", "palettized_per_invoke")
SIZE_LEGEND = """\
legend: unit        what one centroid stands for: scalar = one weight, row = one kernel row,
                    kernel = one k x k kernel (auto: row for k x k convs, scalar otherwise)
        d           values per unit (1 for scalar units)
        N           units clustered in the tensor (its weights / d)
        K           centroids per codebook;  bits = bits per index, ceil(log2 K)
        H           entropy of the indices in bits per index: what an entropy coder needs
        CR log2K    compression vs float32 with log2 K bits per index (Han et al.'s formula,
                    fractional when K is not a power of 2; a packed file uses the bits column)
        CR entropy  compression vs float32 with entropy-coded indices (codebooks included)
        unit kernel: each kernel also stores its scale (--scale_bits) and, with --transforms T,
                    a transform id (log2 T bits); the CR columns count both, bits and H do not"""
PT_LEGEND = "        pt          percentage points: the line's after minus its before"
ENERGY_LEGEND = """\
        energy      estimated energy of one inference, float model / clustered model, both at
                    16-bit weights and activations (the paper's setting), indices charged at
                    their entropy H: the paper's metric (full adders of the MACs plus the
                    weight and activation bits) and an Eyeriss-style memory-hierarchy model
                    (MACs plus DRAM, buffer, array and register-file traffic);
                    per layer: dkm-tf energy --model {model}"""
_LEGEND = """\
legend: bytes          file size;  x float = bytes / bytes of the float file
        bits/w         file bits per model parameter (graph and codebooks included)
        ms (1 thread)  median latency of {runs} invokes after warm-up (files interleaved),
                       batch 1, {runtime} on 1 CPU thread
        acc %          top-1 accuracy of the file in {runtime}, test set (first 10,000 at most)
        int8           dynamic-range int8 weights (float activations)
        palettized     codebook + packed indices, decoded once at load (near-float speed)
        palettized_per_invoke  the same decoded on every invoke (smallest file, slower)"""
RUNTIMES = {"litert": "LiteRT", "tflite": "tf.lite"}  # verify.Comparison.interpreter -> name
TFLITE_LEGEND = _LEGEND.format(runtime="LiteRT", runs=50)


def keras_line(path, tflite=True):
    """The ``[write]`` line of ``clustered.keras``: a newcomer expects the compressed model
    to be small, and this one is larger than the float ``.tflite`` (float32 weights)."""
    where = ("the small files are the palettized .tflite files below" if tflite else
             "run without --notflite for the small palettized .tflite files")
    return (f"[write] {path} ({os.path.getsize(path):,} bytes: a Keras model, its clustered "
            f"weights stored decoded as float32; {where})")


def size_legend(output_dir="dkm_tf_out", result=None):
    """The legend printed under ``dkm-tf compress``'s size table and summary lines: the
    columns, and for the lines ``result`` (a CompressionResult; None: all) prints, ``pt`` and
    the energy line, naming the run's own ``clustered.keras`` for ``dkm-tf energy``."""
    lines = [SIZE_LEGEND]
    if result is None or result.accuracy_before is not None:
        lines.append(PT_LEGEND)
    energy = None if result is None else result.energy
    if result is None or (energy is not None and energy.baseline is not None):
        lines.append(ENERGY_LEGEND.format(model=os.path.join(output_dir, "clustered.keras")))
    return "\n".join(lines)


def table_runtime(reports):
    """The interpreter that timed and scored the files of ``reports`` (``"LiteRT"``, or
    ``"tf.lite"`` without the ``[litert]`` extra), read from the reports: the first
    interpreter that verified each file (``ExportReport.comparisons``; TFLite Micro files
    aside), which is the one ``benchmark_latency`` and ``pipeline.tflite_accuracy`` run
    (LiteRT when installed, else ``tf.lite``). ``"LiteRT or tf.lite"`` when the reports
    say nothing or disagree."""
    kinds = {rep.comparisons[0].interpreter for rep in reports.values()
             if getattr(rep, "format", None) != "tflm" and getattr(rep, "comparisons", None)}
    kind = kinds.pop() if len(kinds) == 1 else None
    return RUNTIMES.get(kind, kind) if kind else "LiteRT or tf.lite"


@contextlib.contextmanager
def native_stderr_filtered(progress):
    """Run a block with the C-level stderr caught, then show each caught line once.

    The two LiteRT runtimes the exporter runs files in (``ai_edge_litert`` and ``tf.lite``)
    each print ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on their first
    interpreter, whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so the line came twice. Lines
    starting ``INFO: `` are dropped unless ``TF_CPP_MIN_LOG_LEVEL`` is 0; any other line
    (warnings, errors) is shown after the block, once. The progress bars keep writing to
    the real stderr meanwhile.
    """
    show_info = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() in ("", "0")
    old_stream = progress.stream
    buf = tempfile.TemporaryFile()
    try:  # one capture at a time in the process (threads: dkm_tf.core.std_fds)
        with std_fds.captured(buf, fds=(2,)) as saved:
            if old_stream is sys.stderr:  # the real stderr, saved under the capture's lock
                progress.stream = _like(old_stream, os.fdopen(
                    os.dup(saved[0]), "w", buffering=1, encoding=getattr(
                        old_stream, "encoding", None), errors=getattr(old_stream, "errors",
                                                                        None)))
            yield
    finally:
        if progress.stream is not old_stream:
            with contextlib.suppress(OSError):  # a stderr that cannot be written (EBADF)
                progress.stream.close()
            progress.stream = old_stream
        buf.seek(0)
        seen, kept = set(), []
        for line in buf.read().decode(errors="replace").splitlines():
            if line in seen or not line.strip() or (
                    not show_info and line.startswith("INFO: ")):
                continue
            seen.add(line)
            kept.append(line)
        buf.close()
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)


def _like(old, stream):
    """``stream`` wrapped as ``old`` is (:class:`dkm_tf.cli_env.StderrGuard`: the bars of
    an export to a stderr that fails are dropped, as before and after it)."""
    from dkm_tf.cli_env import StderrGuard  # noqa: PLC0415

    return StderrGuard(stream) if isinstance(old, StderrGuard) else stream


def import_tensorflow_quietly():
    """Import TensorFlow with the C-level stderr sent to a buffer (TF 2.21 prints INFO lines
    whatever ``TF_CPP_MIN_LOG_LEVEL`` says); shown if the import fails."""
    import importlib.util  # noqa: PLC0415

    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return  # loaded already, or not installed (training on JAX / torch needs none)
    with tempfile.TemporaryFile() as buf:
        try:
            with std_fds.captured(buf, fds=(2,)):  # thread-safe (dkm_tf.core.std_fds)
                import tensorflow  # noqa: F401, PLC0415
        except BaseException:
            buf.seek(0)
            sys.stderr.write(buf.read().decode(errors="replace"))
            raise


AGREEMENT = "agreement with the float model"


def _json_ready(value):
    """``value`` with every non-finite float (NaN, +-inf: "no figure") as None and numpy
    scalars and arrays as plain numbers and lists."""
    import math  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(report):
    """``report`` as strict JSON text (RFC 8259: no ``NaN`` / ``Infinity`` literals, which
    ``json.dumps`` writes by default and strict parsers refuse): a non-finite number, such as
    a comparison's ``min_top1`` where no top-1 check applies, is written as ``null``."""
    import json  # noqa: PLC0415

    return json.dumps(_json_ready(report), indent=2, default=str, allow_nan=False)


def n_classes(train, test):
    """Classes of labelled data: one more than the largest label of either split."""
    return int(max(train[1].max(), test[1].max())) + 1


def data_line(dataset, train, test, calibrates=True, model=None):
    """The ``[data]`` line: sizes, shape, classes, and the input range (a .npz is used as it
    is, so 0-255 pixels for a model trained on [0, 1] show here). Unlabelled samples
    calibrate --refine / --weighting (``calibrates``), else plain wr's k-means reads none.
    Several inputs of ``model`` are named (``tok (6,) in [0, 19]; ...``), in its order."""
    from dkm_tf.export.io_names import keras_input_names  # noqa: PLC0415

    x = train[0]
    if not hasattr(x, "shape"):  # several inputs (as the model takes them): shape each
        xs, ts = _flat(x, model), _flat(test[0], model) if test is not None else None
        names = keras_input_names(model) if model is not None else []
        names = [f"{n} " for n in names] if len(names) == len(xs) else [""] * len(xs)
        shape = "; ".join(f"{names[i]}{tuple(a.shape[1:])} in {_range(a)}" + (
            f" (x_test in {_range(ts[i])})" if ts and _range(ts[i]) != _range(a) else "")
            for i, a in enumerate(xs))
        shape, x = f"[{shape}] (one per input)", xs[0]
    else:
        shape = f"{tuple(x.shape[1:])} in {_range(x)}"
        if test is not None and _range(test[0]) != _range(x):
            shape += f" (x_test in {_range(test[0])})"
    if train[1] is None:
        held = "" if test is None else f" and {len(_flat(test[0], model)[0])} held-out inputs"
        use = ("calibration" + ("" if held else " only: no accuracy is reported")
               if calibrates else "x_train not read by k-means without --refine / --weighting"
               + ("" if held else "; no accuracy is reported"))
        return f"[data] {dataset}: {len(x)} unlabelled samples{held} of shape {shape} ({use})"
    return (f"[data] {dataset}: {len(train[1])} train / {len(test[1])} test samples of shape "
            f"{shape}, {n_classes(train, test)} classes")


def first_samples(x, n, model=None):
    """The first ``n`` samples of inputs ``x``: of an array, or of each input of several (as
    the model takes them, nested as it was built) in a flat list in ``model.inputs`` order,
    as ``to_tflite``'s ``sample_inputs`` (slicing the list kept every sample, or failed); a
    dict keyed by ``model``'s input names by name (:func:`dkm_tf.data_inputs.model_order`)."""
    if hasattr(x, "shape"):
        return x[:n]
    return [a[:n] for a in _flat(x, model)]


def _flat(x, model=None):
    """The arrays of inputs ``x`` (an array, or a list / dict of them, nested) in
    ``model.inputs`` order (:func:`dkm_tf.data_inputs.model_order`)."""
    from dkm_tf.data_inputs import model_order  # noqa: PLC0415

    return [x] if hasattr(x, "shape") else model_order(model, x)


def _range(x):
    return f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"


def agreement_line(labels, why="the model's output is not one row of class scores per "
                   "sample", notes=None):
    """What the accuracy figures are for held-out inputs without labels (``labels``: the
    float model's top-1 classes, or None when its output is not class scores: ``why``,
    also appended to ``notes``, the report's list)."""
    if labels is None:
        if notes is not None:
            notes.append(f"no {AGREEMENT} on x_test: {why}")
        return f"[data] x_test: no agreement figure ({why})"
    return (f"[data] x_test: accuracy figures below are the {AGREEMENT}: the share of the "
            f"{len(labels)} held-out inputs where a compressed form predicts its top-1 class")


def tflite_table(reports, accuracy, metric="test accuracy", refused=None):
    """The formats table, its legend, and why palettized keeps some tensors float32
    (``metric``: what ``acc %`` measures, when it is not the test accuracy; ``refused``:
    label -> why a format's file was not written)."""
    acc_head = f"{'acc %':>8}" if accuracy else ""
    head = (f"{'format':<22}{'bytes':>12}{'x float':>9}{'bits/w':>8}{'ms (1 thread)':>15}"
            f"{acc_head}  file")
    lines = [head, "-" * len(head)]
    for label, rep in reports.items():
        lat = (rep.latency or {}).get("1t", {}).get("median_ms")
        lat_s = f"{lat:.3f}" if lat is not None else "-"
        acc = accuracy.get(label)
        acc_s = (f"{100 * acc:>8.2f}" if acc is not None else f"{'-':>8}") if accuracy else ""
        lines.append(f"{label:<22}{rep.bytes:>12,}{rep.ratio_vs_float:>9.3f}"
                     f"{rep.bits_per_weight:>8.2f}{lat_s:>15}{acc_s}  {rep.path}")
    for label, why in (refused or {}).items():
        lines += textwrap.wrap(f"{label:<22}not written: {why}", width=100,
                               subsequent_indent=" " * 22)
    runs = sorted({(rep.latency or {}).get("1t", {}).get("runs") for rep in reports.values()}
                  - {None})  # the invokes each median is of, read from the reports
    legend = _LEGEND.format(runtime=table_runtime(reports),
                            runs="/".join(map(str, runs)) or "the timed")
    lines.append(legend if accuracy else "\n".join(
        line for line in legend.splitlines() if "acc %" not in line))
    if accuracy and metric != "test accuracy":
        lines.append(f"        acc % here: {metric} (top-1 predictions on the held-out "
                     "inputs, which have no labels)")
    pal, int8 = reports.get("palettized"), reports.get("int8")
    kept = [t for t in (pal.tensors if pal is not None else ()) if t.get("kept")]
    if kept:
        gap = pal.bytes - int8.bytes if int8 is not None else 0
        kept_bytes = sum(int(t.get("codebook_bytes", 0)) for t in kept)  # their float32 bytes
        larger = ""
        if gap > 0:  # "because" only where int8 storage of the kept tensors closes the gap
            larger = (f"palettized ({pal.bytes:,} bytes) is larger than int8 ({int8.bytes:,} "
                      "bytes) " + ("because " if 3 * kept_bytes >= 4 * gap else
                                   f"by more than its {kept_bytes:,} bytes of kept tensors "
                                   "would save as int8 (the rest: weights left unclustered, "
                                   "which int8 stores in 8 bits where large, index storage "
                                   "and decode "
                                   "graph; bytes of each tensor in report.json); "))
        why = "; ".join(f"{t['palette']} ({t['route'].split('auto: ', 1)[-1]})" for t in kept)
        lines += textwrap.wrap(
            f"note: {larger}keep_float=\"auto\" kept {len(kept)} of {len(pal.tensors)} "
            f"clustered tensors float32 so that XNNPACK runs their ops at float speed "
            f"(dkm_tf/export/policy.py): {why}. palettized_per_invoke stores every tensor "
            "palettized; to_tflite(..., keep_float=None) does so with decode once.",
            width=100, subsequent_indent="      ")
    return "\n".join(lines)
