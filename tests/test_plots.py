"""dkm_tf.plots: the PNGs `dkm-tf compress` writes (weights + centroids, formats, energy)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from testing import small_cnn

import dkm_tf
from dkm_tf import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result_and_model():
    model = small_cnn()
    return dkm_tf.compress(model, method="wr", n_clusters=8, verbose=0), model


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 5000


def _labelled(ax):
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel()) and bool(ax.get_title())


def test_write_plots_writes_three_labelled_pngs(result_and_model, tmp_path):
    result, model = result_and_model
    formats = [("float", 150_000, 0.95), ("int8", 45_000, 0.94), ("palettized", 50_000, 0.95)]
    written, skipped = plots.write_plots(result, str(tmp_path), model, formats)
    assert skipped == []
    names = [os.path.basename(p.path) for p in written]
    assert names == ["weights.png", "formats.png", "energy.png"]
    for p in written:
        assert _is_png(p.path) and p.summary
    weights, fmt, energy = (p.figure for p in written)
    n_panels = min(4, len(result.palettes))
    assert len(weights.axes) == n_panels
    assert all(_labelled(ax) for ax in weights.axes) and len(weights.legends) == 1
    assert len(fmt.axes) == 1 and _labelled(fmt.axes[0]) and fmt.axes[0].get_legend()
    # one point per format, at (KiB, %), and the Keras reference line
    offsets = [c.get_offsets()[0] for c in fmt.axes[0].collections]
    np.testing.assert_allclose(offsets, [[b / 1024, 100 * a] for _, b, a in formats])
    assert len(energy.axes) == 2 and all(ax.get_legend() for ax in energy.axes)
    assert all(ax.get_ylabel() and ax.get_title() for ax in energy.axes)
    assert energy.axes[1].get_xlabel() == "layer"


def test_histogram_panels_are_the_largest_tensors_with_their_centroids(result_and_model,
                                                                       tmp_path):
    result, model = result_and_model
    plot = plots.plot_weight_histograms(result.palettes, tmp_path / "w.png", model,
                                        max_layers=2)
    largest = sorted(result.palettes, key=lambda p: -p.n_values)[:2]
    assert len(plot.figure.axes) == 2
    for ax, pal in zip(plot.figure.axes, largest):
        assert ax.get_title().startswith(pal.name)
        lines = sorted(float(line.get_xdata()[0]) for line in ax.lines)
        np.testing.assert_allclose(lines, np.unique(pal.codebook.ravel()), rtol=0, atol=0)
        # the histogram counts every weight of the input model's tensor
        counts = sum(patch.get_height() for patch in ax.patches)
        assert counts == pal.n_values


def test_formats_without_accuracy_are_size_bars(tmp_path):
    plot = plots.plot_formats([("float", 2048, None), ("int8", 1024, None)], tmp_path / "f.png")
    ax = plot.figure.axes[0]
    assert [p.get_width() for p in ax.patches] == [2.0, 1.0]
    assert ax.get_xlabel() == "file size (KiB)" and "no accuracy" in ax.get_title()


def test_bad_inputs_are_clear_errors(result_and_model, tmp_path):
    result, _ = result_and_model
    with pytest.raises(ValueError, match="`palettes`.*Received: palettes=\\[\\]"):
        plots.plot_weight_histograms([], tmp_path / "w.png")
    with pytest.raises(ValueError, match="`formats`"):
        plots.plot_formats([], tmp_path / "f.png")
    with pytest.raises(ValueError, match="`report`.*baseline"):
        plots.plot_energy(result.energy.baseline, tmp_path / "e.png")
    assert list(tmp_path.iterdir()) == []


def test_missing_pieces_are_reported_not_drawn(result_and_model, tmp_path, monkeypatch):
    result, model = result_and_model
    written, skipped = plots.write_plots(result, str(tmp_path), model, formats=None)
    assert [os.path.basename(p.path) for p in written] == ["weights.png", "energy.png"]
    assert skipped == [("formats.png", "no exported file (--notflite)")]
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots.write_plots(result, str(tmp_path), model)


def test_import_loads_no_matplotlib():
    code = "import sys, dkm_tf.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"


def test_histograms_show_the_kernels_the_clustering_saw(tmp_path):
    # a BatchNormalization with variance 0.01 scales its conv's kernel by 10 when folded (as
    # share_weights does before k-means): the histogram must show the folded kernel, so every
    # centroid lies inside its range
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="c"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    bn = model.get_layer("bn")
    bn.moving_variance.assign(np.full(4, 0.01, np.float32))
    result = dkm_tf.compress(model, method="wr", n_clusters=4, verbose=0)
    pal = next(p for p in result.palettes if p.layer_name == "c")
    plot = plots.plot_weight_histograms([pal], tmp_path / "w.png", model)
    ax = plot.figure.axes[0]
    left = ax.patches[0].get_x()
    right = ax.patches[-1].get_x() + ax.patches[-1].get_width()
    assert left - 1e-6 <= pal.codebook.min() and pal.codebook.max() <= right + 1e-6
    raw = model.get_layer("c").kernel.numpy()
    assert pal.codebook.max() > 2 * np.abs(raw).max()  # the fold did scale it
