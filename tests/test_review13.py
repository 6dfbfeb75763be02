"""Regressions a review found in this session's label, dataset, mixed-precision and overrides
changes (each test failed on the code before the fix):

* ``fisher_importance(labels="data")`` refused per-token sparse labels ((n, T) or (n, T, 1)
  for an (n, T, C) output) that it used to compute;
* the first-batch label read went through a ``shuffle`` (filling a 200k buffer: 5-8 s), a
  rarely passing ``filter`` (4.3 s) and an in-memory ``cache`` (TensorFlow logged a discarded
  partial cache), and ``compress`` read the same batch twice before training;
* ``cluster_kernel_model`` made its wrappers and codebooks in the global policy: a float32
  model clustered under ``mixed_float16`` got float16 codebooks without loss scaling;
* an ``--overrides`` file with a UTF-8 BOM, an override whose unit resolves to the one
  trained (``"scalar"`` for a Dense under ``unit="auto"``) and integer regression targets of
  a one-unit MSE model were refused.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from testing import dense_classifier, tf_backend_only

pytestmark = tf_backend_only("tf.data datasets, LossScaleOptimizer")

N, C = 32, 3
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(N, 4)).astype(np.float32)
Y = _RNG.integers(0, C, N)


class _Reached(Exception):
    """``fit`` was reached: nothing before it refused the data."""


@pytest.fixture
def stop_at_fit(monkeypatch):
    import keras

    def fit(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(keras.Model, "fit", fit)


def _dense(units=C, loss=None):
    return dense_classifier(units, loss)


def _slices(y=Y):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((X, y))


# ------------------------------------------------------------------- 1. per-token Fisher
def _token_model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    return keras.Model(inp, keras.layers.Dense(3, name="tok")(
        keras.layers.Dense(8, name="h")(inp)))


def test_fisher_per_token_sparse_labels_match_an_independent_computation():
    import keras
    import tensorflow as tf

    from dkm_tf.graph.sensitivity import fisher_importance

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5, 4)).astype(np.float32)
    y = rng.integers(0, 3, (6, 5))
    model = _token_model()
    kernels = [model.get_layer(n).kernel for n in ("h", "tok")]
    ref = [np.zeros(tuple(k.shape)) for k in kernels]
    for i in range(len(x)):  # per sample: the mean over its tokens of -log softmax[y]
        with tf.GradientTape() as tape:
            logits = model(x[i:i + 1], training=False)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y[i:i + 1], logits=logits))
        for r, g in zip(ref, tape.gradient(loss, [k.value for k in kernels])):
            r += np.square(g.numpy().astype(np.float64)) / len(x)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for labels in (y, y[..., None], y.astype(np.float32)):  # (n, T), (n, T, 1), whole floats
        out = fisher_importance(model, (x, labels), loss_fn, labels="data", damping=0.0,
                                variables=kernels)  # refused before: "shape (samples,)"
        for k, r in zip(kernels, ref):
            np.testing.assert_allclose(out[id(k)], r, rtol=1e-4, atol=1e-12)
    half = y.astype(np.float32)
    half[2, 3] = 0.5
    with pytest.raises(ValueError, match="argument `data`.*whole numbers.*0.5"):
        fisher_importance(model, (x, half), loss_fn, labels="data", variables=kernels)
    high = y.copy()
    high[1, 1] = 3
    with pytest.raises(ValueError, match=r"argument `data`.*\[0, 2\]"):
        fisher_importance(model, (x, high[..., None]), loss_fn, labels="data", variables=kernels)


def test_fisher_two_d_output_keeps_the_class_id_shape_rule():
    import keras

    from dkm_tf.graph.sensitivity import fisher_importance

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match=r"shape \(samples,\) or \(samples, 1\)"):
        fisher_importance(_dense(), (X[:4], np.eye(C)[Y[:4]]), loss_fn, labels="data")


# ------------------------------------------------------------- 2./3. dataset label reads
def test_first_batch_read_goes_through_no_shuffle_filter_or_cache():
    """A shuffle fills its whole buffer before its first batch (reshuffling or not), a filter
    may read many elements per batch, an in-memory cache logs a discarded partial read: none
    is read through (before: read, 5.4-8 s for a 200k buffer)."""
    import tensorflow as tf

    from dkm_tf.training.data_checks import dataset_labels

    keep = lambda a, b: (a, b)  # noqa: E731 (a map: not a from_tensor_slices source)
    for ds in (
            _slices().shuffle(N, seed=0, reshuffle_each_iteration=False).map(keep).batch(8),
            _slices().map(keep).filter(lambda a, b: b >= 0).batch(8),
            _slices().map(keep).cache().batch(8),
            _slices().map(keep).skip(1).batch(8),
            tf.data.Dataset.range(2).flat_map(lambda i: _slices().filter(lambda a, b: b >= 0)),
            tf.data.Dataset.range(2).flat_map(lambda i: _slices().shuffle(N)).batch(8)):
        labels, where = dataset_labels("train_data", ds)
        assert labels is None and where is None, where
    labels, where = dataset_labels("train_data", _slices().map(keep).batch(8).prefetch(2))
    assert labels.tolist() == Y[:8].tolist() and "first batch" in where
    # the source arrays are still read through shuffle and cache (nothing iterated)
    labels, where = dataset_labels("train_data", _slices().shuffle(N, seed=0).cache().batch(8))
    assert labels.tolist() == Y.tolist() and "all 32 labels" in where


def test_bad_labels_behind_a_cache_still_refused(stop_at_fit):
    import dkm_tf

    bad = Y.copy()
    bad[-1] = 9
    with pytest.raises(ValueError, match=r"labels from 0 to 9 \(all 32 labels"):
        dkm_tf.finetune(_dense(), _slices(bad).cache().batch(8), n_clusters=4, epochs=1)


def test_no_partial_cache_warning_from_the_label_read(tmp_path):
    """TensorFlow logs (C++, fd 2) 'did not fully read the dataset being cached' when the
    read stops inside an in-memory cache: checked in a process with its logs on."""
    script = tmp_path / "cache_read.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        from dkm_tf.training.common import check_labels_for
        x = np.zeros((64, 4), np.float32); y = np.arange(64) % 3
        ds = tf.data.Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a, b))
        inp = keras.Input((4,)); model = keras.Model(inp, keras.layers.Dense(3)(inp))
        check_labels_for("train_data", ds.cache().batch(8), model,
                         "sparse_categorical_crossentropy")
        print("done")
    """))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert run.returncode == 0 and "done" in run.stdout, run.stderr[-2000:]
    assert "did not fully read the dataset being cached" not in run.stderr


def _counting_pydataset(y, reads):
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            reads.append(i)
            return X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]

    return Batches()


@pytest.mark.parametrize("method", ["finetune", "dkm+finetune"])
def test_compress_reads_the_first_batch_once(method, stop_at_fit, monkeypatch):
    import dkm_tf
    from dkm_tf.training import data_checks

    reads = []
    with pytest.raises(_Reached):  # before: data[0] read twice
        dkm_tf.compress(_dense(), _counting_pydataset(Y, reads), method=method, n_clusters=4,
                        finetune_epochs=1, dkm_epochs=1, verbose=0)
    assert reads == [0]
    calls, read = [], data_checks._read_labels

    def counted(name, data):
        calls.extend([name] if data is not None else [])
        return read(name, data)

    monkeypatch.setattr(data_checks, "_read_labels", counted)
    with pytest.raises(_Reached):
        dkm_tf.compress(_dense(), _slices().map(lambda a, b: (a, b)).batch(8), method=method,
                        n_clusters=4, finetune_epochs=1, dkm_epochs=1, verbose=0)
    assert calls == ["train_data"]


def test_refused_labels_fixed_in_place_are_read_again(stop_at_fit):
    import dkm_tf

    y, reads = Y.copy(), []
    y[0] = 7
    data = _counting_pydataset(y, reads)
    with pytest.raises(ValueError, match="labels from 0 to 7"):
        dkm_tf.finetune(_dense(), data, n_clusters=4, epochs=1)
    y[0] = 1
    with pytest.raises(_Reached):
        dkm_tf.finetune(_dense(), data, n_clusters=4, epochs=1)
    assert reads == [0, 0]


# --------------------------------------------------------- 4. kernel clustering's policy
def test_kernel_clustering_keeps_a_float32_models_policy_under_a_mixed_global(policy):
    import keras
    import tensorflow as tf

    from dkm_tf.training.kernel_clustering import cluster_kernel_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 16)

    def clustered(global_policy):
        keras.utils.set_random_seed(0)
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, name="c1")(inp)
        h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="c2")(h))
        model = keras.Model(inp, keras.layers.Dense(10, name="d")(h))
        policy(global_policy)
        try:
            return cluster_kernel_model(model, 4)[0]
        finally:
            policy("float32")

    out = {}
    for name in ("float32", "mixed_float16"):
        model = clustered(name)
        dtypes = {layer.name: layer.compute_dtype for layer in model.layers if layer.weights}
        assert set(dtypes.values()) == {"float32"}, dtypes  # before: float16 wrappers, codebook
        codebook = [v for v in model.trainable_variables if "codebook" in v.path]
        with tf.GradientTape() as tape:
            loss = 1e-4 * keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
                y, model(x, training=True))
        grad = tf.convert_to_tensor(tape.gradient(loss, codebook)[0]).numpy()
        out[name] = (model(x).numpy(), grad)
    np.testing.assert_array_equal(out["mixed_float16"][0], out["float32"][0])
    np.testing.assert_array_equal(out["mixed_float16"][1], out["float32"][1])  # none underflow


# ------------------------------------------------------------------------- 5. overrides
def test_overrides_file_with_a_utf8_bom_is_read(tmp_path):
    from dkm_tf.cli_overrides import parse_overrides

    path = tmp_path / "ov.json"
    path.write_text('{"conv1": {"n_clusters": 8}}', encoding="utf-8-sig")
    assert parse_overrides(str(path)) == {"conv1": {"n_clusters": 8}}


def test_dkm_override_unit_compared_as_resolved(stop_at_fit):
    import keras

    import dkm_tf
    from dkm_tf.pipeline_args import check_method_overrides

    args = {"n_clusters": 4, "unit": "auto", "granularity": "per_tensor", "init": "kmeans++"}
    for method in ("dkm", "dkm+finetune"):  # "auto" is "scalar" for a Dense: the same unit
        assert check_method_overrides(_dense(), {"out": {"unit": "scalar"}}, method, args)
        assert check_method_overrides(_dense(), {"Dense": {"unit": "row"}}, method,
                                      {**args, "unit": "scalar"})  # a row of 1 value
    with pytest.raises(_Reached):  # before: refused
        dkm_tf.compress(_dense(), (X, Y), method="dkm", n_clusters=4, unit="auto",
                        dkm_epochs=1, verbose=0, overrides={"out": {"unit": "scalar"}})
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="c")(inp))
    conv = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    assert check_method_overrides(conv, {"c": {"unit": "row"}}, "dkm", args)  # auto: rows
    for unit in ("scalar", "kernel"):  # not what the re-training regularized: still refused
        with pytest.raises(ValueError, match=r"overrides\['c'\].*no 'unit' other than 'auto'"):
            check_method_overrides(conv, {"c": {"unit": unit}}, "dkm", args)


@pytest.mark.parametrize("form", ["arrays", "dataset"])
def test_integer_regression_targets_are_not_range_checked(form, stop_at_fit):
    import dkm_tf

    targets = np.arange(N)[:, None] * 3  # 0..93: MSE targets, not labels 0 / 1
    data = (X, targets) if form == "arrays" else _slices(targets).batch(8)
    for method in ("finetune", "dkm"):
        with pytest.raises(_Reached):  # before: "Expected labels 0 and 1"
            dkm_tf.compress(_dense(1, loss="mse"), data, method=method, n_clusters=4,
                            finetune_epochs=1, dkm_epochs=1, verbose=0)
    for loss in (None, "binary_crossentropy"):  # the loss reads labels 0 / 1: still refused
        with pytest.raises(ValueError, match="argument `train_data`.*labels 0 and 1"):
            dkm_tf.compress(_dense(1, loss=loss), data, method="finetune", n_clusters=4,
                            finetune_epochs=1, verbose=0)


def test_label_reads_last_one_compress_call(stop_at_fit):
    """A PyDataset relabelled between two ``compress`` calls is read again: its new
    out-of-range labels are refused up front (a read kept for the object's life passed them,
    and fit failed after the clustering), and new valid labels are not refused by old ones."""
    import dkm_tf

    y, reads = Y.copy(), []
    data = _counting_pydataset(y, reads)
    kwargs = {"method": "finetune", "n_clusters": 4, "finetune_epochs": 1, "verbose": 0}
    with pytest.raises(_Reached):
        dkm_tf.compress(_dense(), data, **kwargs)
    y += 3  # now every label is beyond the 3 classes
    with pytest.raises(ValueError, match=r"class labels in \[0, 2\]"):
        dkm_tf.compress(_dense(), data, **kwargs)
    y -= 3
    with pytest.raises(_Reached):
        dkm_tf.compress(_dense(), data, **kwargs)
    assert reads == [0, 0, 0]


@pytest.mark.parametrize("loss", [["sparse_categorical_crossentropy"],
                                  {"out": "sparse_categorical_crossentropy"},
                                  "custom", "focal"])
def test_label_range_kept_for_losses_in_lists_dicts_and_others(loss, stop_at_fit):
    """Out-of-range labels are refused before any work for a sparse loss given in a list or
    a dict, a custom loss of a 3-class model, and a binary focal loss of a one-unit model
    (2d26700 checked the range only for losses it recognised: they reached fit)."""
    import keras

    import dkm_tf

    units, labels = (1, np.full(N, 2)) if loss == "focal" else (C, np.full(N, 5))
    if loss == "custom":
        loss = lambda y, p: keras.losses.sparse_categorical_crossentropy(y, p)  # noqa: E731
    elif loss == "focal":
        loss = keras.losses.BinaryFocalCrossentropy()
    with pytest.raises(ValueError, match="argument `train_data`"):
        dkm_tf.compress(_dense(units, loss=loss), (X, labels), method="finetune",
                        n_clusters=4, finetune_epochs=1, verbose=0)
