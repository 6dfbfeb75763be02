"""Every number `dkm-tf compress` shows, recounted from the files and models themselves: the
sizes on disk, gzip sizes, ratios and bits per weight of the .tflite table and report.json, the
accuracies of Keras and of each file, the energy figures against `dkm_tf.energy.estimate`, the
numbers drawn in the plots, and report.json as strict JSON (no NaN / Infinity literals)."""

import gzip
import json
import math
import os
import types

import numpy as np
import pytest

import dkm_tf
from dkm_tf import cli, cli_tables, data, pipeline, plots
from dkm_tf.pipeline_metrics import evaluate_accuracy, predicted_classes


def _refuse_constant(name):
    raise ValueError(f"report.json holds the non-JSON literal {name}")


def _small_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten(name="flat")(h)
    out = keras.layers.Dense(10, name="fc")(h)
    return keras.Model(inp, out, name="small")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One `dkm-tf compress` of a small trained CNN on digits (wr, K=4, files and plots)."""
    tmp = tmp_path_factory.mktemp("truth")
    model = _small_model()
    (x, y), test = data.load_digits()
    pipeline.train_classifier(model, (x, y), epochs=2)
    path = str(tmp / "small.keras")
    model.save(path)
    out = str(tmp / "out")
    result = cli.run_compress(path, dataset="digits", method="wr", n_clusters=4, quiet=True,
                              output_dir=out)
    with open(os.path.join(out, "report.json")) as f:
        text = f.read()
    return types.SimpleNamespace(model=model, result=result, out=out, text=text, test=test)


def test_report_json_is_strict_json_with_the_documented_keys(run):
    report = json.loads(run.text, parse_constant=_refuse_constant)  # NaN literals: before
    for key in ("method", "size", "accuracy_before", "accuracy_after", "metric", "calibration",
                "notes", "energy", "tflite", "plots"):
        assert key in report
    # a comparison with no top-1 check has no minimum: null, not NaN
    mins = [c["min_top1"] for rep in report["tflite"].values() for c in rep["comparisons"]]
    assert None in mins and all(m is None or math.isfinite(m) for m in mins)


def test_json_text_writes_non_finite_numbers_as_null_and_numpy_as_numbers():
    text = cli_tables.json_text({"a": float("nan"), "b": [float("inf"), -float("inf")],
                                 "c": np.float32(0.5), "d": np.int64(3), "e": np.arange(2),
                                 "f": (np.bool_(True), "x")})
    assert json.loads(text, parse_constant=_refuse_constant) == {
        "a": None, "b": [None, None], "c": 0.5, "d": 3, "e": [0, 1], "f": [True, "x"]}


def test_file_sizes_ratios_and_bits_are_those_of_the_files(run):
    report = json.loads(run.text)
    n_params = run.result.model.count_params()
    float_bytes = os.path.getsize(report["tflite"]["float"]["path"])
    for label, rep in report["tflite"].items():
        with open(rep["path"], "rb") as f:
            raw = f.read()
        assert rep["bytes"] == len(raw) == run.result.tflite[label].bytes, label
        assert rep["gzip_bytes"] == len(gzip.compress(raw, 9, mtime=0)), label
        assert rep["ratio_vs_float"] == pytest.approx(len(raw) / float_bytes), label
        assert rep["bits_per_weight"] == pytest.approx(8 * len(raw) / n_params), label
    for label in ("palettized", "palettized_per_invoke"):  # per tensor: codebooks included
        for t in report["tflite"][label]["tensors"]:
            stored = t["index_bytes"] + t["codebook_bytes"] + t.get("aux_bytes", 0)
            assert t["bits_per_weight"] == pytest.approx(8 * stored / t["n_weights"]), t


def test_accuracies_are_recounted_in_keras_and_in_litert(run):
    from ai_edge_litert.interpreter import Interpreter

    x, y = run.test
    report = json.loads(run.text)
    before = np.mean(np.argmax(run.model.predict(x, verbose=0), 1) == y)
    after = np.mean(np.argmax(run.result.model.predict(x, verbose=0), 1) == y)
    assert report["accuracy_before"] == pytest.approx(before)
    assert report["accuracy_after"] == pytest.approx(after)
    for label, rep in report["tflite"].items():
        it = Interpreter(model_path=rep["path"])
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], x.shape)
        it.allocate_tensors()
        it.set_tensor(inp["index"], x.astype(np.float32))
        it.invoke()
        acc = np.mean(np.argmax(it.get_tensor(out["index"]), 1) == y)
        assert rep["test_accuracy"] == pytest.approx(acc), label


def test_size_rows_are_recounted_from_the_palettes(run):
    res = run.result
    orig = comp = comp_h = 0.0
    for p, row in zip(res.palettes, res.size.rows):
        n, k = p.n_values, p.codebook.shape[1]
        counts = np.bincount(p.indices.ravel().astype(int))
        prob = counts[counts > 0] / counts.sum()
        h = float(-(prob * np.log2(prob)).sum())
        cb = p.codebook.size * 32
        assert (row["N"], row["K"], row["bits"]) == (p.indices.size, k, math.ceil(math.log2(k)))
        assert row["entropy"] == pytest.approx(h)
        assert row["cr_log2"] == pytest.approx(n * 32 / (p.indices.size * math.log2(k) + cb))
        assert row["cr_entropy"] == pytest.approx(n * 32 / (p.indices.size * h + cb))
        orig, comp, comp_h = orig + n * 32, comp + p.indices.size * math.log2(k) + cb, \
            comp_h + p.indices.size * h + cb
    other = res.model.count_params() - sum(p.n_values for p in res.palettes)
    t = res.size.totals
    assert res.size.other_params == other
    assert t["cr_clustered_log2"] == pytest.approx(orig / comp)
    assert t["cr_clustered_entropy"] == pytest.approx(orig / comp_h)
    assert t["cr_model_log2"] == pytest.approx((orig + 32 * other) / (comp + 32 * other))


def test_energy_is_that_of_dkm_tf_energy(run):
    res = run.result
    direct = dkm_tf.energy.estimate(res.model, palettes=res.palettes, index_cost="entropy")
    e = json.loads(run.text)["energy"]
    assert e["paper_total"] == pytest.approx(direct.paper_total)
    assert e["hierarchy_total"] == pytest.approx(direct.hierarchy_total)
    assert e["reduction"]["paper"] == pytest.approx(direct.reduction.paper)
    assert e["reduction"]["hierarchy"] == pytest.approx(direct.reduction.hierarchy)
    base = dkm_tf.energy.estimate(run.model)  # the input model, uncompressed
    assert res.energy.baseline.paper_total == pytest.approx(base.paper_total)
    assert f"{direct.reduction.paper:.2f}x lower by the paper's metric" in res.summary()


def test_plotted_numbers_are_the_reported_ones(run):
    report = json.loads(run.text)
    figs = {os.path.basename(p.path): p.figure for p in run.result.plots}
    ax = figs["formats.png"].axes[0]
    points = {c.get_label().split(":")[0]: tuple(c.get_offsets()[0]) for c in ax.collections}
    for label, rep in report["tflite"].items():
        assert points[label] == pytest.approx((rep["bytes"] / 1024, 100 * rep["test_accuracy"]))
    assert ax.lines[0].get_ydata()[0] == pytest.approx(100 * report["accuracy_before"])
    energy = figs["energy.png"].axes
    layers = report["energy"]["layers"]
    for ax, key in zip(energy, ("paper_total", "hierarchy_total")):
        heights = [r.get_height() for r in ax.patches]
        n = len(layers)  # bars: n before, then n after
        assert heights[n:] == pytest.approx([row[key] for row in layers])
    for ax, pal in zip(figs["weights.png"].axes, sorted(run.result.palettes,
                                                       key=lambda p: -p.n_values)):
        assert sum(r.get_height() for r in ax.patches) == pal.n_values
        drawn = sorted(float(line.get_xdata()[0]) for line in ax.lines)
        assert drawn == pytest.approx(sorted(np.unique(pal.codebook).tolist()))


def test_nan_scores_predict_no_class():
    scores = np.array([[np.nan, 1.0], [0.0, 2.0], [np.nan, np.nan]], np.float32)
    assert predicted_classes(scores, 3).tolist() == [-1, 1, -1]
    binary = np.array([[np.nan], [0.7], [0.2]], np.float32)
    assert predicted_classes(binary, 3, threshold=0.5).tolist() == [-1, 1, 0]


def test_a_model_that_outputs_nan_has_accuracy_zero_not_the_share_of_class_0():
    model = _small_model()
    layer = model.get_layer("fc")
    layer.bias.assign(np.full(10, np.nan, np.float32))
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    y = np.zeros(20, np.int64)  # argmax of a NaN row said class 0: accuracy 1.0
    assert evaluate_accuracy(model, (x, y)) == 0.0


def test_energy_plot_says_higher_when_compression_costs_energy(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="fc")])
    _, palettes, _ = dkm_tf.share_weights(model, 1000)  # 128 distinct values: K = 128
    report = dkm_tf.energy.estimate(model, palettes=palettes, index_cost="entropy")
    ratio = report.reduction.hierarchy
    assert ratio < 1
    plot = plots.plot_energy(report, tmp_path / "e.png")
    title = plot.figure.axes[1].get_title()
    assert f"{1 / ratio:.2f}x higher" in title and "lower" not in title
    assert f"{1 / ratio:.2f}x higher by the hierarchy model" in plot.summary


def test_size_bars_do_not_claim_there_was_no_test_data(tmp_path):
    plot = plots.plot_formats([("float", 4000, None), ("int8", 2000, None)], tmp_path / "f.png")
    assert "no test data" not in plot.figure.axes[0].get_title()


def _rep(nbytes, tensors=()):
    return types.SimpleNamespace(bytes=nbytes, ratio_vs_float=1.0, bits_per_weight=8.0,
                                 latency={}, path="x.tflite", tensors=list(tensors))


def test_tflite_note_says_because_only_where_the_kept_tensors_explain_the_gap():
    kept = {"palette": "conv/kernel", "kept": True, "codebook_bytes": 144,
            "route": "auto: latency"}
    pal = {"palette": "fc/kernel", "codebook_bytes": 64, "index_bytes": 400}
    reports = {"float": _rep(6000), "int8": _rep(5800), "palettized": _rep(9900, [kept, pal])}
    text = " ".join(cli_tables.tflite_table(reports, {}).split())
    assert "because keep_float" not in text  # 144 kept bytes cannot explain 4,100 more
    assert "is larger than int8 (5,800 bytes) by more than its 144 bytes of kept" in text
    kept["codebook_bytes"] = 18_432  # stored as int8 they would save 13,824 > 4,100
    text = " ".join(cli_tables.tflite_table(reports, {}).split())
    assert "is larger than int8 (5,800 bytes) because keep_float" in text


def test_weight_panels_of_scaled_kernels_draw_weight_values_not_unit_coordinates(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(8, 3, name="conv")])
    _, palettes, _ = dkm_tf.share_weights(model, 4, unit="kernel", codebook="shared")
    (pal,) = palettes
    assert pal.scales is not None
    ax = plots.plot_weight_histograms(palettes, tmp_path / "w.png", model).figure.axes[0]
    assert len(ax.lines) == 0  # no centroid coordinates (unit-norm shapes) on a weight axis
    decoded = pal.decode().ravel()
    red = [p for p in ax.patches if p.get_label().startswith("clustered weights")]
    assert len(red) == 1  # the clustered weights themselves, in weight units
    xs = red[0].get_xy()[:, 0]
    assert xs.min() == pytest.approx(decoded.min()) and xs.max() == pytest.approx(decoded.max())


def test_weight_panel_of_a_sparse_palette_shows_k_plus_zero(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="fc")])
    kernel = model.get_layer("fc").kernel
    kernel.assign(np.where(np.arange(128).reshape(16, 8) % 3 == 0, 0.0, kernel.numpy()))
    _, palettes, _ = dkm_tf.share_weights(model, 4, preserve_sparsity=True)
    ax = plots.plot_weight_histograms(palettes, tmp_path / "w.png", model).figure.axes[0]
    assert "K=4+zero" in ax.get_title()  # as the size table's "4+z", not K=5


def test_a_refused_format_is_not_counted_as_timed_or_scored(run, tmp_path, monkeypatch):
    """The latency and accuracy bars count the files written: a refused format is neither
    timed nor scored (both bars once claimed 4 formats with 3 files)."""
    from dkm_tf import cli_export, export
    from dkm_tf.progress import Progress

    real = export.to_tflite

    def refuse_int8(model, path, **kw):
        if kw.get("mode") == "int8" or "int8" in os.path.basename(path):
            raise export.ExportVerificationError("refused for the test")
        return real(model, path, **kw)

    monkeypatch.setattr(export, "to_tflite", refuse_int8)
    progress, stages = Progress(enabled=False), []
    make = progress.stage

    def record(*a, **kw):
        stages.append(make(*a, **kw))
        return stages[-1]

    monkeypatch.setattr(progress, "stage", record)
    x_test, y_test = run.test
    reports, accuracy = cli_export.write_tflite(run.result, str(tmp_path), x_test[:8],
                                                (x_test[:64], y_test[:64]), progress)
    assert isinstance(reports["int8"], str) and sorted(accuracy) == sorted(
        k for k, v in reports.items() if not isinstance(v, str))
    by_name = {s.name.split(" ")[0]: s for s in stages}
    assert by_name["export"].total == 4
    for name in ("latency", "accuracy"):
        assert by_name[name].total == by_name[name].n == 3, name


def test_summary_says_higher_when_compression_costs_more_energy():
    from dkm_tf.pipeline_metrics import ratio_words

    assert ratio_words(2.0) == "2.00x lower" and ratio_words(0.8) == "1.25x higher"
    ratio = types.SimpleNamespace(paper=0.8, hierarchy=0.5)
    energy = types.SimpleNamespace(baseline=object(), ratio_vs=lambda base: ratio)
    size = types.SimpleNamespace(summary=lambda: "size")
    text = pipeline.CompressionResult(model=None, palettes=[], skipped=[], size=size,
                                      method="wr", energy=energy).summary()
    assert "1.25x higher by the paper's metric, 2.00x higher by the" in text, text
    assert "lower" not in text


def test_stage_seconds_name_what_ran():
    """A fine-tuning run's k-means + fine-tuning time is "finetune", not "cluster"."""
    model = _small_model()
    (x, y), _ = data.load_digits()
    x, y = x[:64], y[:64]
    result = dkm_tf.compress(model, (x, y), None, method="finetune", n_clusters=4,
                             finetune_epochs=1, verbose=0)
    assert set(result.seconds) == {"finetune"}, result.seconds
    result = dkm_tf.compress(model, (x, y), None, method="wr", n_clusters=4, verbose=0)
    assert set(result.seconds) == {"cluster"}, result.seconds
