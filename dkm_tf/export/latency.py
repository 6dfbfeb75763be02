"""Invoke latency of ``.tflite`` models, measured interleaved so machine noise hits all alike.

Each model gets its own interpreter (default XNNPACK delegate, ``threads`` threads); after a
warm-up, the models are invoked in round-robin blocks, and the per-invoke median (and 10th
percentile, a robust figure on a shared machine) is reported per model.
"""

from __future__ import annotations

import os
import time

import numpy as np

from dkm_tf.core.validate import check_int
from dkm_tf.export import verify
from dkm_tf.export.verify import make_interpreter

__all__ = ["benchmark_latency"]


def _load(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(os.fspath(model), "rb") as f:
        return f.read()


def benchmark_latency(paths, inputs=None, *, threads=1, runs=200, block=5, warmup=10,
                      interpreter=None, reference=None):
    """Median invoke latency of one or several models, measured interleaved.

    Args:
        paths: a ``.tflite`` path or bytes, or a dict ``{label: path_or_bytes}`` / list.
        inputs: one sample (array without batch axis, or list of them per model input);
            zeros when None.
        threads: interpreter threads.
        runs: timed invokes per model.
        block: consecutive invokes of one model before switching to the next.
        warmup: untimed invokes per model first.
        interpreter: ``"litert"`` (``ai_edge_litert``) or ``"tflite"`` (``tf.lite``); default
            ``"litert"`` when installed, else ``"tflite"``.
        reference: a label; each model then also gets ``"ratio"``, the median over rounds of
            its block's mean time over the reference's block in the same round (a paired
            ratio: load that comes and goes between rounds cancels), and ``"ratio_p10"``,
            its 10th percentile over the reference's.

    Returns:
        ``{label: {"median_ms", "p10_ms", "p90_ms", "runs", "threads"}}`` (plus ``"ratio"``,
        ``"ratio_p10"`` with ``reference``); a single path gives a single dict.

    Example:
        >>> benchmark_latency({"float": "m.tflite", "pal": "p.tflite"})  # doctest: +SKIP
    """
    threads, runs, block, warmup = (
        check_int(name, value, minimum=low, maximum=2**31 - 1) for name, value, low in
        (("threads", threads, 1), ("runs", runs, 1), ("block", block, 1), ("warmup", warmup, 0)))
    if interpreter is None:
        interpreter = "litert" if verify.litert_available() else "tflite"
    single = not isinstance(paths, (dict, list, tuple))
    items = {"model": paths} if single else (
        dict(paths) if isinstance(paths, dict) else {str(i): p for i, p in enumerate(paths)})
    if not items:
        raise ValueError("Invalid value for argument `paths`. Expected a .tflite path or bytes, "
                         f"or a non-empty dict or list of them. Received: paths={paths!r}")
    for label, p in items.items():
        if not isinstance(p, (bytes, bytearray, str, os.PathLike)):
            raise TypeError(f"Invalid type for argument `paths`. Expected a .tflite path or "
                            f"bytes, or a dict or list of them. Received: {p!r} of type "
                            f"{type(p).__name__} for model {label!r}")
        if not isinstance(p, (bytes, bytearray)) and not os.path.isfile(p):
            raise FileNotFoundError(f"Invalid value for argument `paths`. Expected a .tflite "
                                    f"file. Received: {os.fspath(p)!r} for model {label!r}, "
                                    f"{'a folder' if os.path.isdir(p) else 'no such file'}")
    if reference is not None and reference not in items:
        raise ValueError(f"Invalid value for argument `reference`. Expected one of the labels "
                         f"{sorted(items)}. Received: reference={reference!r}")
    its = {}
    for label, p in items.items():
        it = make_interpreter(interpreter, _load(p), threads=threads)
        for j, d in enumerate(it.get_input_details()):
            x = None
            if inputs is not None:
                x = inputs[j] if isinstance(inputs, (list, tuple)) else inputs
            if x is not None and np.size(x) != np.prod(d["shape"]):
                want = tuple(int(n) for n in d["shape"][1:])
                raise ValueError(f"Invalid value for argument `inputs`. Expected one sample "
                                 f"of shape {want} for input {j} of model {label!r}. "
                                 f"Received: shape {np.shape(x)}")
            x = np.zeros(d["shape"], d["dtype"]) if x is None else \
                np.asarray(x, d["dtype"]).reshape(d["shape"])
            it.set_tensor(d["index"], x)
        for _ in range(warmup):
            it.invoke()
        its[label] = it
    times = {label: [] for label in its}
    while min(len(t) for t in times.values()) < runs:
        for label, it in its.items():
            for _ in range(block):
                t0 = time.perf_counter()
                it.invoke()
                times[label].append(time.perf_counter() - t0)
    out = {}
    rounds = min(len(t) for t in times.values()) // block
    for label, t in times.items():
        a = np.asarray(t[:runs]) * 1e3
        out[label] = {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
                      "p90_ms": float(np.percentile(a, 90)), "runs": runs, "threads": threads}
    if reference is not None:
        def per_round(label):
            return np.asarray(times[label][:rounds * block]).reshape(rounds, block).mean(1)

        ref = per_round(reference)
        for label in times:
            out[label]["ratio"] = float(np.median(per_round(label) / ref))
            out[label]["ratio_p10"] = out[label]["p10_ms"] / out[reference]["p10_ms"]
    return out["model"] if single else out
