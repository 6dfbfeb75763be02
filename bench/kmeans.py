"""Benchmark: dkm_tf k-means vs scikit-learn, measured side by side in one run.

Writes bench/results/kmeans.json and bench/results/kmeans.md.

  python bench/kmeans.py             # scalar K=16 on 10 M values, vector K=256 on 1 M x 9
  python bench/kmeans.py --quick     # smaller sizes (smoke test)
"""

import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from dkm_tf.core import kmeans  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _time(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def scalar_case(n, k, reps):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, n - n // 10), rng.laplace(0, 0.02, n // 10)])
    x = x.astype(np.float32)
    ours_t, (c, idx) = _time(lambda: kmeans.cluster_values(x, k), reps)
    ours_sse = kmeans.sse(x, c, idx)
    sk = KMeans(k, init="k-means++", n_init=1, max_iter=100, random_state=0)
    sk_t, fitted = _time(lambda: sk.fit(x.reshape(-1, 1)), 1)
    return {"case": f"scalar K={k}, {n:,} values", "ours_s": ours_t, "ours_sse": ours_sse,
            "sklearn_s": sk_t, "sklearn_sse": float(fitted.inertia_),
            "speedup": sk_t / ours_t, "sse_ratio": ours_sse / float(fitted.inertia_),
            "target_s": 1.0}


def vector_case(n, d, k, reps, iters=20):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    faiss_on = kmeans._has_faiss()
    ours_t, (c, idx) = _time(lambda: kmeans.cluster_values(x, k, max_iter=iters), reps)
    ours_sse = kmeans.sse(x, c, idx)
    sk = KMeans(k, init="k-means++", n_init=1, max_iter=iters, tol=0, random_state=0)
    sk_t, fitted = _time(lambda: sk.fit(x), 1)
    return {"case": f"vector K={k}, {n:,} x {d}, {iters} iterations"
                    f" ({'faiss' if faiss_on else 'numpy'})",
            "ours_s": ours_t, "ours_sse": ours_sse, "sklearn_s": sk_t,
            "sklearn_sse": float(fitted.inertia_), "speedup": sk_t / ours_t,
            "sse_ratio": ours_sse / float(fitted.inertia_), "target_s": 2.0}


def main(argv):
    quick = "--quick" in argv
    reps = 1 if quick else 3
    rows = [scalar_case(1_000_000 if quick else 10_000_000, 16, reps),
            vector_case(100_000 if quick else 1_000_000, 9, 256, reps)]
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "quick": quick, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(exist_ok=True)
    stem = "kmeans_quick" if quick else "kmeans"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# k-means: dkm_tf vs scikit-learn (same run)", "",
             f"{meta['time']}, {meta['cpus']} CPUs, numpy {meta['numpy']}. Ours: median of "
             f"{reps} runs; sklearn: 1 run (k-means++, n_init=1).", "",
             "| case | dkm_tf s | target s | sklearn s | speed-up | SSE ours / sklearn |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours_s']:.3f} | {r['target_s']:.1f} | "
                     f"{r['sklearn_s']:.2f} | {r['speedup']:.1f}x | {r['sse_ratio']:.4f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
