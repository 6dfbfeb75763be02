"""Benchmark: dkm_tf k-means vs scikit-learn and faiss, measured side by side in one run.

Writes bench/results/kmeans.json and bench/results/kmeans.md.

  python bench/kmeans.py               # scalar K=16 on 10 M values; vector 1 M x 9, K=16/64/256
  python bench/kmeans.py --quick       # smaller sizes (smoke test)
  python bench/kmeans.py --threads 4   # threads for BLAS / OpenMP / faiss / dkm_tf (default 2)

The vector section runs, on the same data (Gaussian, d = 9 like 3x3 kernels) and for the same
20 Lloyd iterations (tol=0), four engines: the numpy engine before issue 12 ("numpy-old",
kept below as a reference copy), the current numpy engine ("numpy", the default install),
faiss (the optional ``[faiss]`` extra) and scikit-learn. numpy-old, numpy and faiss start
from the same k-means++ centroids; scikit-learn uses its own k-means++. Times are wall-clock
(best of the repeats, engines interleaved) and process CPU time; the machine may be shared,
so the load average at the start and end is recorded.
"""

import json
import os
import pathlib
import platform
import sys
import time


def _threads(argv):
    return int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 2


THREADS = _threads(sys.argv)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # before numpy is imported

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from dkm_tf.core import _kmeans_vec, kmeans  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ITERS = 20


def _time(fn, reps):
    """Best wall time and the CPU time of that run, and the result."""
    best, out = None, None
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        run = (time.perf_counter() - w, time.process_time() - c)
        best = run if best is None or run[0] < best[0] else best
    return best, out


def scalar_case(n, k, reps):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, n - n // 10), rng.laplace(0, 0.02, n // 10)])
    x = x.astype(np.float32)
    (ours_t, _), (c, idx) = _time(lambda: kmeans.cluster_values(x, k), reps)
    ours_sse = kmeans.sse(x, c, idx)
    sk = KMeans(k, init="k-means++", n_init=1, max_iter=100, random_state=0)
    (sk_t, _), fitted = _time(lambda: sk.fit(x.reshape(-1, 1)), 1)
    return {"case": f"scalar K={k}, {n:,} values", "ours_s": ours_t, "ours_sse": ours_sse,
            "sklearn_s": sk_t, "sklearn_sse": float(fitted.inertia_),
            "speedup": sk_t / ours_t, "sse_ratio": ours_sse / float(fitted.inertia_),
            "target_s": 1.0}


# ------------------------------------------------------------------ the engine before issue 12
def _old_nearest(x, c, chunk):
    """The nearest-centroid step of the old loop (still the regularizer's, unchanged)."""
    from dkm_tf.core import kmeans as kmeans_lib  # noqa: PLC0415

    return kmeans_lib._nearest(x, c, chunk)  # noqa: SLF001


def _old_lloyd(x, c, max_iter, tol=0.0, chunk=65_536):
    """The numpy Lloyd loop of dkm_tf.core.kmeans.vector_kmeans before issue 12 (verbatim)."""
    xd = x.astype(np.float64)
    k = c.shape[0]
    prev = np.inf
    for _ in range(max_iter):
        idx, dist = _old_nearest(xd, c, chunk)
        err = dist.sum()
        counts = np.bincount(idx, minlength=k)
        sums = np.stack([np.bincount(idx, weights=xd[:, j], minlength=k)
                         for j in range(xd.shape[1])], axis=1)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            new[empty] = xd[np.argsort(dist)[::-1][:empty.size]]
        c = new
        if np.isfinite(prev) and prev - err <= tol * prev and not empty.size:
            break
        prev = err
    idx, _ = _old_nearest(xd, c, chunk)
    return c, idx


def _faiss_lloyd(x, c, max_iter):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    return kmeans._faiss_kmeans(x.astype(np.float64), c.shape[0], c, max_iter, 0)


def vector_case(n, d, k, reps, old_reps=1):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    xd = x.astype(np.float64)
    init_rng = np.random.default_rng(0)  # vector_kmeans' k-means++ on a subsample
    c0 = kmeans._kmeanspp(xd[init_rng.choice(n, 20 * k, replace=False)], k, init_rng)
    engines = {
        "numpy": (lambda: _kmeans_vec.lloyd(xd.copy(), c0, max_iter=ITERS, tol=0.0,
                                            chunk=65_536), reps),
        "numpy-old": (lambda: _old_lloyd(x, c0, ITERS), old_reps),
    }
    if kmeans._has_faiss():
        engines["faiss"] = (lambda: _faiss_lloyd(x, c0, ITERS), reps)
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        pass
    else:
        sk = KMeans(k, init="k-means++", n_init=1, max_iter=ITERS, tol=0, random_state=0)
        engines["sklearn"] = (lambda: sk.fit(x), 1)
    best = {}
    for rep in range(max(r for _, r in engines.values())):  # interleaved
        for name, (fn, r) in engines.items():
            if rep < r:
                (wall, cpu), out = _time(fn, 1)
                if name not in best or wall < best[name]["s"]:
                    sse = (float(out.inertia_) if name == "sklearn"
                           else kmeans.sse(x, out[0], out[1]))
                    best[name] = {"s": wall, "cpu_s": cpu, "sse": sse}
    # the public entry point (validation, distinct check, init, engine choice) for reference
    (api_t, _), (c, idx) = _time(lambda: kmeans.vector_kmeans(x, k, max_iter=ITERS, tol=0,
                                                               use_faiss=False), 1)
    best["vector_kmeans (numpy, incl. init)"] = {"s": api_t, "cpu_s": None,
                                                 "sse": kmeans.sse(x, c, idx)}
    return {"case": f"vector K={k}, {n:,} x {d}, {ITERS} iterations", "k": k,
            "engines": best}


def _load():
    return round(os.getloadavg()[0], 2)


def main(argv):
    quick = "--quick" in argv
    reps = 1 if quick else 3
    _kmeans_vec.THREADS = THREADS
    load0 = _load()
    rows = [scalar_case(1_000_000 if quick else 10_000_000, 16, reps)]
    vec = [vector_case(100_000 if quick else 1_000_000, 9, k, reps) for k in (16, 64, 256)]
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": THREADS,
            "python": platform.python_version(), "numpy": np.__version__,
            "quick": quick, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_1min": [load0, _load()]}
    RESULTS.mkdir(exist_ok=True)
    stem = "kmeans_quick" if quick else "kmeans"
    lines = ["# k-means: dkm_tf vs scikit-learn and faiss (same run)", "",
             f"{meta['time']}, {meta['cpus']} CPUs, {THREADS} threads, numpy {meta['numpy']}, "
             f"1-min load average {load0} at the start and {meta['load_average_1min'][1]} at "
             "the end (shared machine).", "",
             "## Scalar (1-D)", "",
             f"Ours: best of {reps} runs; sklearn: 1 run (k-means++, n_init=1).", "",
             "| case | dkm_tf s | target s | sklearn s | speed-up | SSE ours / sklearn |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours_s']:.3f} | {r['target_s']:.1f} | "
                     f"{r['sklearn_s']:.2f} | {r['speedup']:.1f}x | {r['sse_ratio']:.4f} |")
    lines += ["", "## Vector (d = 9, Gaussian), 20 Lloyd iterations, tol=0", "",
              f"Best wall time of {reps} interleaved runs (numpy-old and sklearn: 1 run); "
              "numpy-old, numpy and faiss from the same k-means++ centroids. Goal: numpy "
              "within 2x of faiss, SSE no worse.", "",
              "| case | engine | wall s | CPU s | SSE | SSE / numpy-old | s / faiss |",
              "|---|---|---|---|---|---|---|"]
    for r in vec:
        e = r["engines"]
        ref_sse, faiss_s = e["numpy-old"]["sse"], e.get("faiss", {}).get("s")
        for name, v in e.items():
            cpu = "" if v["cpu_s"] is None else f"{v['cpu_s']:.2f}"
            ratio = f"{v['s'] / faiss_s:.2f}" if faiss_s else ""
            lines.append(f"| {r['case']} | {name} | {v['s']:.2f} | {cpu} | {v['sse']:.1f} | "
                         f"{v['sse'] / ref_sse:.6f} | {ratio} |")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                      "vector": vec}, indent=2))
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
