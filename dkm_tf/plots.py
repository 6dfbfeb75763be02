"""Plots of a compression run, written next to its outputs by ``dkm-tf compress``.

Three PNG files (matplotlib's Agg canvas, no pyplot, no global backend change; matplotlib is
imported only when a plot is drawn: ``pip install dkm-tf[plots]``):

* ``weights.png`` — :func:`plot_weight_histograms`: for the largest clustered tensors, the
  histogram of the input model's weights with the k-means centroids drawn on it (Deep k-Means,
  Wu et al. 2018, §3: every weight is replaced by its nearest centroid).
* ``formats.png`` — :func:`plot_formats`: test accuracy against file size of every exported
  format (bars of size when no format has an accuracy figure).
* ``energy.png`` — :func:`plot_energy`: energy per layer before and after compression, under
  the paper's metric (eqs. 5-7) and the memory-hierarchy model (:mod:`dkm_tf.energy`).

Each function returns a :class:`Plot` (path, the matplotlib ``Figure``, a one-line summary).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from dkm_tf.core.files import atomic_path
from dkm_tf.pipeline_metrics import ratio_words

__all__ = ["MISSING_MATPLOTLIB", "PLOT_FILES", "Plot", "matplotlib_available", "plot_energy",
           "plot_formats", "plot_weight_histograms", "write_plots"]

MISSING_MATPLOTLIB = "plots skipped: pip install matplotlib (or dkm-tf[plots])"
PLOT_FILES = ("weights.png", "formats.png", "energy.png")  # what write_plots writes
MAX_CENTROID_LINES = 64  # more centroid values than this are drawn as a rug, not lines


class Plot(NamedTuple):
    """A written plot: ``path`` (PNG), ``figure`` (matplotlib Figure), ``summary`` (text)."""

    path: str
    figure: object
    summary: str


def matplotlib_available():
    """True when matplotlib is importable."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = os.fspath(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _folded(model):
    """``model`` with each BatchNormalization folded into the layer before it, as the
    clustering saw it (``share_weights`` and ``finetune`` fold first), or None."""
    if model is None:
        return None
    from dkm_tf.graph.batchnorm import maybe_fold  # noqa: PLC0415

    try:
        return maybe_fold(model).model
    except (ValueError, TypeError):  # e.g. non-finite statistics: use the weights as they are
        return model


def _original_values(model, palette):
    """The model's values of the palette's weight, or None when it has no such weight."""
    if model is None:
        return None
    from dkm_tf.graph.clusterable import get_weight  # noqa: PLC0415

    try:
        var = get_weight(model.get_layer(palette.layer_name), palette.weight_name)
    except (ValueError, KeyError, AttributeError):
        return None
    values = np.asarray(var.numpy() if hasattr(var, "numpy") else var, np.float32)
    return values if values.shape == tuple(palette.layout.kernel_shape) else None


def plot_weight_histograms(palettes, path, original_model=None, max_layers=4, bins=80,
                           note=""):
    """Histogram of each of the ``max_layers`` largest tensors' weights with its centroids
    (scaled kernel units, ``unit="kernel"``: with the histogram of the clustered weights
    instead, since each of those weights is its kernel's scale times a centroid coordinate).

    Args:
        palettes: the run's :class:`~dkm_tf.core.palette.Palette` list.
        path: destination PNG.
        original_model: the model before compression; its weights are histogrammed, with
            each BatchNormalization folded into the kernel before it first, as the clustering
            does (the clustered values are used where it has no matching weight).
        max_layers: how many tensors (the largest by weight count) get a panel.
        bins: histogram bins.
        note: a line under the title (e.g. that re-training moved the weights first).

    Returns:
        A :class:`Plot`; the figure has one axes per panel.
    """
    chosen = sorted(palettes, key=lambda p: -p.n_values)[:max_layers]
    if not chosen:
        raise ValueError("Invalid value for argument `palettes`. Expected at least one "
                         "Palette. Received: palettes=[]")
    cols = min(2, len(chosen))
    rows = -(-len(chosen) // cols)
    fig = _figure(5.2 * cols, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    source = _folded(original_model)
    for ax in axes[len(chosen):]:
        fig.delaxes(ax)
    for ax, pal in zip(axes, chosen):
        values = _original_values(source, pal)
        label = "input model's weights (before clustering)"
        if values is None:
            values, label = pal.decode(), "clustered weights (no input weight to match)"
        ax.hist(values.ravel(), bins=bins, color="tab:blue", alpha=0.75, label=label)
        centroids = np.unique(pal.codebook.ravel())
        what = "centroids" if pal.unit_dim == 1 else f"centroid coordinates (d={pal.unit_dim})"
        if pal.scales is not None:  # scaled kernels: a weight is scale x a centroid coordinate,
            # so the coordinates are no weight values: draw the clustered weights themselves
            ax.hist(pal.decode().ravel(), bins=bins, histtype="step", color="tab:red", lw=1.2,
                    label="clustered weights (each kernel: scale x centroid)")
        elif centroids.size <= MAX_CENTROID_LINES:
            for i, c in enumerate(centroids):
                ax.axvline(c, color="tab:red", lw=0.9, alpha=0.8,
                           label=f"{what} ({centroids.size})" if i == 0 else None)
        else:
            ax.plot(centroids, np.zeros_like(centroids), "|", color="tab:red", ms=14,
                    label=f"{what} ({centroids.size})")
        groups = pal.layout.n_groups
        k = f"{pal.n_clusters - 1}+zero" if pal.preserve_sparsity else pal.n_clusters
        ax.set_title(f"{pal.name}: {pal.n_values:,} weights, K={k}"
                     + (f", {groups} codebooks" if groups > 1 else ""), fontsize=9)
        ax.set_xlabel("weight value")
        ax.set_ylabel("number of weights")
    handles, labels = [], []
    for ax in axes[:len(chosen)]:  # one legend for all panels, under them
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)),
               fontsize=8)
    fig.suptitle("Weights and k-means centroids of the largest clustered tensors"
                 + (f"\n{note}" if note else ""), fontsize=10)
    summary = f"weight histograms with centroids of {', '.join(p.name for p in chosen)}"
    return Plot(_save(fig, path), fig, summary)


def plot_formats(formats, path, reference_accuracy=None, metric="test accuracy"):
    """Test accuracy against file size of every exported format.

    Args:
        formats: list of ``(label, bytes, accuracy)``; accuracy in [0, 1] or None.
        path: destination PNG.
        reference_accuracy: accuracy of the uncompressed Keras model (a dashed line).
        metric: what the accuracies measure (the y axis label), e.g. ``"agreement with the
            float model"`` for held-out inputs without labels.

    Returns:
        A :class:`Plot` with one axes: a scatter of accuracy (%) against size (KiB), or, when
        no format has an accuracy, horizontal bars of size.
    """
    if not formats:
        raise ValueError("Invalid value for argument `formats`. Expected at least one "
                         "(label, bytes, accuracy). Received: formats=[]")
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    kib = [b / 1024 for _, b, _ in formats]
    with_acc = [(label, k, a) for (label, _, a), k in zip(formats, kib) if a is not None]
    if with_acc:
        for i, (label, k, a) in enumerate(with_acc):
            ax.scatter([k], [100 * a], s=70, color=f"C{i}", marker="osD^vP*X"[i % 8],
                       label=f"{label}: {k:,.1f} KiB, {100 * a:.2f}%", zorder=3, alpha=0.85)
        if reference_accuracy is not None:
            ax.axhline(100 * reference_accuracy, color="gray", ls="--", lw=1,
                       label=f"Keras model before compression ({100 * reference_accuracy:.2f}%)")
        accs = [100 * a for _, _, a in with_acc] + (
            [100 * reference_accuracy] if reference_accuracy is not None else [])
        pad = max(0.5, 0.15 * (max(accs) - min(accs)))
        ax.set_ylim(min(accs) - pad, max(accs) + pad)
        ax.set_xlim(0, max(kib) * 1.25)
        ax.set_xlabel("file size (KiB)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title("Accuracy and size of each exported format (up and left is better)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        summary = "accuracy vs file size of " + ", ".join(f[0] for f in formats)
    else:
        ys = np.arange(len(formats))
        ax.barh(ys, kib, color=[f"C{i}" for i in ys], label="file size")
        ax.set_yticks(ys)
        ax.set_yticklabels([f[0] for f in formats])
        ax.invert_yaxis()
        ax.set_xlabel("file size (KiB)")
        ax.set_ylabel("format")
        ax.set_title("Size of each exported format (no accuracy figure: no labelled test data, "
                     "or outputs that are not class scores)", fontsize=10)
        ax.legend(fontsize=7)
        summary = "file size of " + ", ".join(f[0] for f in formats)
    return Plot(_save(fig, path), fig, summary)


def plot_energy(report, path):
    """Energy per layer before and after compression (two panels: paper metric, hierarchy).

    Args:
        report: an :class:`~dkm_tf.energy.EnergyReport` with a ``baseline`` (the
            uncompressed model), as :func:`dkm_tf.compress` returns in ``result.energy``.
        path: destination PNG.

    Returns:
        A :class:`Plot` with two axes (log-scale energy per layer, before and after bars).
    """
    if getattr(report, "baseline", None) is None:
        raise ValueError("Invalid value for argument `report`. Expected an EnergyReport with a "
                         "baseline (estimate(model, palettes=...)). Received: a report without")
    from dkm_tf.energy.layer_totals import rows  # noqa: PLC0415 - a TimeDistributed: summed

    base = dict(rows(report.baseline.layers))  # steps summed (before, the first step as td)
    table = [(label, x) for label, x in rows(report.layers) if label in base]
    names, layers = [label for label, _ in table], [x for _, x in table]
    xs = np.arange(len(names))
    fig = _figure(max(6.0, 1.0 + 0.55 * len(names)), 6.4)
    axes = fig.subplots(2, 1, sharex=True)
    red = report.reduction
    panels = [("paper metric", "paper_total", "MAC units", red.paper),
              ("memory-hierarchy model", "hierarchy_total", "16-bit MAC units", red.hierarchy)]
    for ax, (title, attr, unit, ratio) in zip(axes, panels):
        before = [getattr(base[n], attr) for n in names]  # by row label
        after = [getattr(x, attr) for x in layers]
        ax.bar(xs - 0.2, before, width=0.4, color="tab:gray", label="before (uncompressed)")
        ax.bar(xs + 0.2, after, width=0.4, color="tab:green", label="after (clustered)")
        ax.set_yscale("log")
        ax.set_ylabel(f"energy ({unit})", fontsize=8)
        ax.set_title(f"{title}: {ratio_words(ratio)} in total", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[1].set_xticks(xs)
    axes[1].set_xticklabels(names, rotation=45 if len(names) > 6 else 0, ha="right"
                            if len(names) > 6 else "center", fontsize=8)
    axes[1].set_xlabel("layer")
    fig.suptitle("Energy per layer before and after compression (per image)", fontsize=10)
    summary = (f"energy per layer before/after ({ratio_words(red.paper)} by the paper metric, "
               f"{ratio_words(red.hierarchy)} by the hierarchy model)")
    return Plot(_save(fig, path), fig, summary)


def write_plots(result, out_dir, original_model=None, formats=None):
    """Write every plot a :class:`~dkm_tf.pipeline.CompressionResult` supports into ``out_dir``.

    Args:
        result: what :func:`dkm_tf.compress` returned.
        out_dir: existing folder.
        original_model: the model before compression (for the weight histograms).
        formats: ``(label, bytes, accuracy)`` per exported file, or None (no formats plot).

    Returns:
        ``(plots, skipped)``: the written :class:`Plot` list and ``(name, reason)`` for each
        plot not drawn.

    Raises:
        ImportError: matplotlib is not installed (the message is :data:`MISSING_MATPLOTLIB`).
    """
    if not matplotlib_available():
        raise ImportError(MISSING_MATPLOTLIB)
    plots, skipped = [], []
    weights_png, formats_png, energy_png = PLOT_FILES
    if result.palettes:
        note = ("the centroids are those of the weights after Deep k-Means re-training (the "
                "histogram: before it)" if result.method.startswith("dkm") else "")
        plots.append(plot_weight_histograms(result.palettes, os.path.join(out_dir, weights_png),
                                            original_model, note=note))
    else:
        skipped.append((weights_png, "no clustered tensor"))
    if formats:
        plots.append(plot_formats(formats, os.path.join(out_dir, formats_png),
                                  result.accuracy_before,
                                  getattr(result, "metric", "test accuracy")))
    else:
        skipped.append((formats_png, "no exported file (--notflite)"))
    if result.energy is not None and result.energy.baseline is not None:
        plots.append(plot_energy(result.energy, os.path.join(out_dir, energy_png)))
    else:
        skipped.append((energy_png, "no energy estimate for this model"))
    return plots, skipped
