"""Write the saved-model fixtures of ``tests/test_saved_compat.py`` with whichever dkm_tf is
imported: run it against an extracted old tree to record what that version saved.

    git -C /work/main archive <commit> | tar -x -C /tmp/old_<commit>
    cd /tmp && PYTHONPATH=/tmp/old_<commit> python <repo>/tests/data/saved_compat/make_fixtures.py \
        OUT_DIR <tag> [case ...]

Run it from a folder outside the repository so that the old package, not the checkout, is
imported (the script prints ``dkm_tf.__file__``). Each case writes ``<tag>_<case>.keras`` (or
``.weights.h5.gz``, gzipped) and ``<tag>_<case>.npz`` with what the old process computed: the inputs
``x``, the model's outputs ``pred``, the stripped model's weights ``strip_<i>`` and outputs
``strip_pred``, the trainable flag of every weight, the summed penalties ``losses``, the
outputs ``after_fit`` after one more training step where the model was saved compiled, and a
JSON ``meta`` (commit tag, case, settings). Cases the old version lacks are skipped.
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dkm_tf  # noqa: E402

K = 4
SOFT_TEMPERATURE = 0.25
DISTILL = {"num_classes": 3, "temperature": 2.0, "alpha": 0.3}


def _seeded(model, sparse=False):
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.5 for w in model.get_weights()]
    if sparse:  # a pruned model: every third weight exactly zero
        weights = [np.where(np.arange(w.size).reshape(w.shape) % 3 == 0, 0, w) for w in weights]
    model.set_weights(weights)
    return model


def sequential_model():
    return _seeded(keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="fc")], name="seq"))


def lstm_model():
    inp = keras.Input((6, 6, 2), name="x")
    h = keras.layers.Reshape((6, 12))(inp)
    h = keras.layers.LSTM(4, name="rnn")(h)
    return _seeded(keras.Model(inp, keras.layers.Dense(3, name="fc")(h), name="lstm"))


@keras.saving.register_keras_serializable("dkm_tf_saved_compat")
class SubNet(keras.Model):
    """A subclassed model with two wrapped Dense layers (ClusterWeights' own route for them)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flat = keras.layers.Flatten()
        self.d1 = dkm_tf.ClusterWeights(keras.layers.Dense(8, name="d1"), n_clusters=K)
        self.d2 = dkm_tf.ClusterWeights(keras.layers.Dense(3, name="d2"), n_clusters=2)

    def call(self, x):
        return self.d2(keras.ops.relu(self.d1(self.flat(x))))


def _subclassed():
    keras.utils.set_random_seed(1)
    net = SubNet()
    x, y = data()
    net(x[:1])
    _compile(net)
    net.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    return net, {"model": "subclassed", "fit_steps": 2}, False


def _recurrent_supported():
    try:
        return dkm_tf.is_clusterable(keras.layers.LSTM(2))
    except Exception:  # noqa: BLE001 - an old version without it
        return False


def base_model(name="base", sparse=False):
    """Two 3x3 convs and a dense head on 6x6x2 inputs; weights from a fixed numpy seed."""
    inp = keras.Input((6, 6, 2), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(4, 3, name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(3, name="fc")(h)
    return _seeded(keras.Model(inp, out, name=name), sparse)


def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 6, 2)).astype("float32")
    y = np.array([0, 1, 2, 1], dtype="int32")
    return x, y


def _has(fn, arg):
    return arg in inspect.signature(fn).parameters


def _cluster(model, **kw):
    return dkm_tf.cluster_weights(model, K, **kw)


def cases():
    """``{case: builder}`` for what this dkm_tf supports; a builder returns
    ``(model, settings, compiled)``."""
    cw = dkm_tf.cluster_weights
    out = {
        "hard_tensor": lambda: (_cluster(base_model()), {}, False),
        "hard_channel": lambda: (_cluster(base_model(), granularity="per_channel"),
                                 {"granularity": "per_channel"}, False),
        "kernel_unit": lambda: (_cluster(base_model(), unit="kernel"), {"unit": "kernel"},
                                False),
        "regularized": _regularized,
        "reg_clustered": _reg_clustered,
        "frozen": _frozen,
        "finetuned": _finetuned,
        "latent": lambda: (_cluster(base_model(), latent=True), {"latent": True}, False),
        "sequential": lambda: (_cluster(sequential_model()), {"model": "sequential"}, False),
        "spectral": _spectral,
        "subclassed": _subclassed,
    }
    if _has(cw, "preserve_sparsity"):
        out["sparse"] = lambda: (_cluster(base_model(sparse=True), preserve_sparsity=True),
                                 {"preserve_sparsity": True, "model": "sparse"}, False)
    if _recurrent_supported():
        out["lstm"] = lambda: (_cluster(lstm_model()), {"model": "lstm"}, False)
    if _has(cw, "assignment"):
        out["soft"] = lambda: (_cluster(base_model(), assignment="soft",
                                        temperature=SOFT_TEMPERATURE),
                               {"assignment": "soft", "temperature": SOFT_TEMPERATURE}, False)
        out["soft_trained"] = _soft_trained
    if _has(cw, "codebook"):
        out["kernel_shared"] = lambda: (_cluster(base_model(), unit="kernel", codebook="shared"),
                                        {"unit": "kernel", "codebook": "shared"}, False)
        scaled = {"unit": "kernel", "codebook": "shared", "transforms": 8, "scale_bits": 8}
        out["kernel_scaled"] = lambda: (_cluster(base_model(), **scaled), dict(scaled), False)
    if hasattr(dkm_tf, "factorise_convs") or "factorise_convs" in getattr(dkm_tf, "__all__", ()):
        out["factorised"] = _factorised
    if "DistillationLoss" in getattr(dkm_tf, "__all__", ()):
        out["distill"] = _distill
    return out


def _regularized():
    model = base_model()
    dkm_tf.attach_regularizer(model, K, lam=0.1)
    return model, {"lam": 0.1}, False


def _spectral():
    model = base_model()
    # K=2 < rank 3 of the 3-row unit matrices: K >= rank would be degenerate (and warn)
    dkm_tf.attach_regularizer(model, 2, lam=0.1, relaxation="spectral")
    return model, {"lam": 0.1, "relaxation": "spectral", "n_clusters": 2}, False


def _reg_clustered():
    model = base_model()
    dkm_tf.attach_regularizer(model, K, lam=0.1)
    return _cluster(model), {"lam": 0.1}, False


def _frozen():
    model = base_model()
    model.get_layer("c1").trainable = False
    return _cluster(model), {"frozen": ["c1"]}, False


def _compile(model, loss=None):
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _finetuned():
    model = _cluster(base_model())
    _compile(model)
    x, y = data()
    model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0)
    return model, {"fit_steps": 3}, True


def _soft_trained():
    model = _cluster(base_model(), assignment="soft", temperature=SOFT_TEMPERATURE)
    _compile(model)
    x, y = data()
    model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    return model, {"assignment": "soft", "temperature": SOFT_TEMPERATURE, "fit_steps": 2}, True


def _factorised():
    shared = dkm_tf.share_weights(base_model(), K, unit="kernel", codebook="shared")
    model, _ = dkm_tf.factorise_convs(shared.model, shared.palettes, force=True)
    return model, {"factorised": True}, False


def _distill():
    model = _cluster(base_model())
    metrics = (["accuracy"] if "DistillationAccuracy" not in dkm_tf.__all__
               else [dkm_tf.DistillationAccuracy(DISTILL["num_classes"])])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=dkm_tf.DistillationLoss(**DISTILL), metrics=metrics)
    x, y = data()
    model.fit(x, _targets(y), epochs=1, batch_size=4, shuffle=False, verbose=0)
    return model, dict(DISTILL, fit_steps=1), True


def _targets(y):
    """DistillationLoss' targets: [one-hot | teacher logits] (the teacher: the base model)."""
    x, _ = data()
    return np.concatenate([np.eye(3, dtype="float32")[y], np.asarray(base_model()(x))], axis=1)


def deflate(path):
    """Re-zip a ``.keras`` file with deflate (Keras stores it uncompressed: 34 KB -> 4 KB);
    every member's bytes are kept, and Keras reads either form."""
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, content in members:
            z.writestr(name, content)


def record(model, case, settings, compiled, tag, out_dir):
    """Save ``model``, then record what this dkm_tf does with the saved state.

    The file is written first: before 2026-12-04 (0b9069c) every call of a soft model moved
    its warm start and ``strip_clustering`` snapped the wrapper's own variables, so outputs
    computed before the save would not be those of the file. The outputs are those of the
    model's first call after the save (its state is the file's); strip and the resumed fit
    run on fresh loads of the file by this same code.
    """
    path = os.path.join(out_dir, f"{tag}_{case}")
    model.save(path + ".keras")
    if case in ("hard_tensor", "soft", "kernel_shared", "finetuned"):
        model.save_weights(path + ".weights.h5")
        with open(path + ".weights.h5", "rb") as f, gzip.open(path + ".weights.h5.gz", "wb") as g:
            g.write(f.read())
        os.remove(path + ".weights.h5")
    x, y = data()
    arrays = {"x": x, "pred": np.asarray(model(x, training=False))}
    arrays["trainable"] = np.array([any(w is t for t in model.trainable_weights)
                                    for w in model.weights])
    arrays["losses"] = np.float32(sum(float(keras.ops.convert_to_numpy(v))
                                      for v in model.losses)) if model.losses else np.float32(0)
    if case not in ("factorised", "regularized", "spectral", "subclassed"):  # strip refuses
        # subclassed models; the other three have no wrapper
        plain, _ = dkm_tf.strip_clustering(keras.models.load_model(path + ".keras"))
        for i, w in enumerate(plain.get_weights()):
            arrays[f"strip_{i}"] = w
        arrays["strip_pred"] = np.asarray(plain(x))
    temps = [float(keras.ops.convert_to_numpy(lay.temperature_variable))
             for lay in model.layers if hasattr(lay, "temperature_variable")]
    meta = {"tag": tag, "case": case, "settings": settings, "n_clusters": K,
            "compiled": compiled, "keras": keras.__version__, "temperatures": temps,
            "dkm_tf": os.path.dirname(dkm_tf.__file__)}
    if compiled:  # one more step from the file: where a resumed fit must arrive
        resumed = keras.models.load_model(path + ".keras")
        resumed.fit(x, _targets(y) if case == "distill" else y, epochs=1, batch_size=4,
                    shuffle=False, verbose=0)
        arrays["after_fit"] = np.asarray(resumed(x, training=False))
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(path + ".npz", **arrays)
    deflate(path + ".keras")


def main(argv):
    out_dir, tag, wanted = argv[0], argv[1], argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    print("dkm_tf from", dkm_tf.__file__, "keras", keras.__version__)
    keras.utils.set_random_seed(0)
    for case, build in cases().items():
        if wanted and case not in wanted:
            continue
        try:
            model, settings, compiled = build()
            record(model, case, settings, compiled, tag, out_dir)
            print("wrote", case)
        except Exception as e:  # noqa: BLE001 - a probe: say what this version cannot do
            print("FAILED", case, type(e).__name__, str(e)[:300])


if __name__ == "__main__":
    main(sys.argv[1:])
