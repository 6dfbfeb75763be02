"""The numbers dkm_tf reports, recomputed from the files it wrote (helper H5, session 23).

* ``tflite_accuracy`` of a full-int8 file with integer inputs / outputs: float inputs are
  quantized by the file's own scale and zero point (a plain cast read 0.4 as 0: accuracy 0.44
  measured where the file's is 0.98), an integer one-unit output is dequantized before the
  threshold.
* The latency figures say how many invokes their median is of (``ExportReport.summary`` and
  the formats table of ``dkm-tf compress``).
* ``inspect_tflite``'s role of an index tensor packing several indices per int16 word says so
  (its ``distinct`` counts words, not indices).
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def _int8_io_file(tmp_path, x, w, b, name):
    """A full-int8 file with int8 input and output (TF's converter), as a user brings one."""
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(w.shape[1])])
    model.layers[0].set_weights([w, b])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path = tmp_path / name
    path.write_bytes(conv.convert())
    return str(path)


def _input_scale(path):
    from dkm_tf.export.interpreters import default_interpreters, make_interpreter

    with open(path, "rb") as f:
        it = make_interpreter(default_interpreters()[0], f.read())
    return it.get_input_details()[0]["quantization"]


def _reference_scores(path, x):
    """The file run sample by sample on inputs quantized by hand (numpy), dequantized."""
    from dkm_tf.export.interpreters import default_interpreters, make_interpreter

    with open(path, "rb") as f:
        it = make_interpreter(default_interpreters()[0], f.read())
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    rows = []
    for row in x:
        q = np.clip(np.round(row[None] / s_in) + z_in, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q)
        it.invoke()
        rows.append((it.get_tensor(out["index"]).astype(np.float64) - z_out) * s_out)
    return np.concatenate(rows)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tflite_accuracy_quantizes_the_inputs_of_an_int8_io_file(tmp_path):
    from dkm_tf.pipeline import tflite_accuracy

    rng = np.random.default_rng(0)
    x = (3 * rng.normal(size=(120, 6))).astype(np.float32)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    y = np.argmax(x @ w, axis=1)
    path = _int8_io_file(tmp_path, x, w, np.zeros(3, np.float32), "io8.tflite")
    expected = float(np.mean(np.argmax(_reference_scores(path, x), axis=1) == y))
    assert expected > 0.9  # the file itself is a good classifier
    got = tflite_accuracy(path, (x, y))
    assert got == pytest.approx(expected, abs=1.0 / len(x))  # batch vs one-by-one: 1 sample
    # inputs given already quantized (integers) are used as they are
    q = np.clip(np.round(x / _input_scale(path)[0]) + _input_scale(path)[1], -128, 127)
    assert tflite_accuracy(path, (q.astype(np.int8), y)) == pytest.approx(got)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tflite_accuracy_dequantizes_a_one_unit_int8_output(tmp_path):
    from dkm_tf.pipeline import tflite_accuracy

    rng = np.random.default_rng(1)
    x = (2 * rng.normal(size=(120, 4))).astype(np.float32)
    w = rng.normal(size=(4, 1)).astype(np.float32)
    b = np.array([3.0], np.float32)  # outputs mostly > 0: the int8 zero point is far from 0
    y = ((x @ w)[:, 0] + b[0] > 0).astype(int)
    path = _int8_io_file(tmp_path, x, w, b, "bin8.tflite")
    ref = _reference_scores(path, x)[:, 0]
    expected = float(np.mean((ref > 0.0).astype(int) == y))
    got = tflite_accuracy(path, (x, y), threshold=0.0)  # a logit: class 1 above 0
    assert got == pytest.approx(expected, abs=1.0 / len(x))


def test_latency_figures_say_how_many_invokes():
    from dkm_tf.cli_tables import tflite_table
    from dkm_tf.export.report import ExportReport

    rep = ExportReport(path="m.tflite", format="float", variant="", bytes=1000,
                       gzip_bytes=900, float_bytes=1000, analytic_bytes=1000, n_params=250,
                       tensors=[], comparisons=[],
                       latency={"1t": {"median_ms": 0.25, "p10_ms": 0.2, "p90_ms": 0.3,
                                       "runs": 50, "threads": 1}})
    assert "median 0.250 ms of 50 invokes, 1 thread, batch 1" in rep.summary()
    table = tflite_table({"float": rep}, {})
    assert "median latency of 50 invokes after warm-up" in table
    row = [line for line in table.splitlines() if line.startswith("float ")][0]
    assert "0.250" in row and "1,000" in row and "32.00" in row  # 8 * 1000 / 250 bits/w


def test_inspect_role_of_word_packed_indices_says_words(tmp_path):
    from dkm_tf.core.palette import cluster_tensor
    from dkm_tf.export import to_tflite
    from dkm_tf.export.inspect import inspect_tflite

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((48,)), keras.layers.Dense(64, name="fc")])
    w = rng.normal(size=(48, 64)).astype(np.float32)
    pal = cluster_tensor(w, kind="dense", n_clusters=16, seed=0, layer_name="fc")
    model.layers[0].set_weights([pal.decode().reshape(w.shape), np.zeros(64, np.float32)])
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, palettes=[pal], sample_inputs=rng.normal(size=(4, 48)).astype(
        np.float32), keep_float=None, index_packing="tuples")
    info = inspect_tflite(path)
    [p] = info.palettized
    assert p["per_element"] == 3 and p["K"] == 16
    [row] = [t for t in info.tensors if t["name"] == p["indices"]]
    assert row["distinct"] > 16  # distinct int16 words, not indices (<= K)
    assert row["role"] == "palette indices (once, K=16), 3 per int16 word"
    assert "3 per int16 word" in info.summary()


def test_compress_says_which_model_the_whole_model_cr_counts(tmp_path, capsys):
    """A model with BatchNormalization: the size table's "whole model" (other params) and the
    .tflite bits/w count the compressed (BN-folded) model, which has fewer parameters than the
    ``[model]`` line; a note says so, with both counts (the CR recomputed from them)."""
    import json

    from dkm_tf import cli

    inp = keras.Input((6, 6, 2))
    h = keras.layers.DepthwiseConv2D(3, name="dw")(inp)  # clustered per channel by default
    h = keras.layers.Conv2D(8, 3, name="c1")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(h))
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 8).astype(np.float32)
                                       for _ in range(4)])
    path = tmp_path / "bn.keras"
    model.save(path)
    out = tmp_path / "out"
    rc = cli.run(["dkm-tf", "compress", "--model", str(path), "--n_clusters", "4", "--notflite",
                  "--noplots", "--quiet", "--output_dir", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    n_in = model.count_params()  # 18 + 2 + 144 + 8 + 4 * 8 + 32 * 3 + 3 = 303
    folded = keras.models.load_model(out / "clustered.keras", compile=False).count_params()
    assert folded == n_in - 4 * 8  # gamma, beta, mean, var folded into c1's kernel and bias
    report = json.loads((out / "report.json").read_text())
    clustered = sum(r["N"] * r["d"] for r in report["size"]["rows"])
    assert report["size"]["other_params"] == folded - clustered
    assert (f"the compressed model has {folded:,} parameters, the input model {n_in:,} "
            "(1 BatchNormalization layer(s) folded") in printed.out
    assert any(f"{folded:,} parameters" in n for n in report["notes"])
    # the depthwise kernel: per channel although --granularity is per_tensor, K per codebook
    [row] = [r for r in report["size"]["rows"] if r["name"] == "dw/kernel"]
    assert row["granularity"] == "per_channel" and row["K"] == 4
    assert row["original_bits"] == 18 * 32  # and its CR counts both codebooks (2 x 4 x 32)
    assert row["cr_log2"] == pytest.approx(18 * 32 / (18 * 2 + 2 * 4 * 32))
    assert ("1 tensor(s) clustered with another granularity than per_tensor: "
            "dw/kernel (per_channel); their K is per codebook") in printed.out
