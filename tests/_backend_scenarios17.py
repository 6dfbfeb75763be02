"""Architecture scenarios run on one Keras backend, in a process of their own.

The companion of tests/_backend_scenarios.py for tests/test_backend_jax17.py: the same idea
(numpy-drawn weights and data, fixed seeds, one JSON line on stdout), on the architectures the
small conv-conv-dense net does not reach: BatchNormalization after convs, depthwise /
separable / grouped convs, Conv1D, LSTM / GRU, MultiHeadAttention, Embedding(mask_zero=True)
with padded sequences, a layer called twice, a nested model, several inputs and outputs, the
mixed_float16 policy. Each architecture runs ``cluster_weights`` (hard and soft) + ``fit`` +
``strip_clustering``, ``share_weights`` (plain and Fisher-weighted) and ``attach_regularizer``
+ ``RefreshKMeans``; outputs are reported at batch 1 and 3.

Usage: ``KERAS_BACKEND=jax python tests/_backend_scenarios17.py <dir for .keras files, or -> [--full
| --quick | --export] name ...`` (``--full``: every step, ``--quick``: the test's subset,
``--export``: TensorFlow only, load and export the files another backend saved in <dir>).
"""

import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dkm_tf  # noqa: E402

K = 4
L = keras.layers


def _seeded(m, seed=0, scale=0.4):
    """Numpy-drawn weights (the same on every backend); BN variances kept positive."""
    rng = np.random.default_rng(seed)
    values = []
    for w in m.weights:
        v = rng.standard_normal(w.shape) * scale
        if "moving_variance" in w.path:
            v = np.abs(v) + 0.5
        values.append(v.astype(w.dtype))
    m.set_weights(values)
    return m


def conv_bn():
    inp = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", name="c1")(inp)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU()(h)
    h = L.Conv2D(4, 3, use_bias=False, name="c2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    return keras.Model(inp, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))


def convs():
    inp = keras.Input((6, 6, 4))
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(inp)
    h = L.SeparableConv2D(4, 3, padding="same", name="sep")(h)
    h = L.Conv2D(4, 3, groups=2, name="grouped")(h)
    return keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(h)))


def conv1d():
    inp = keras.Input((8, 3))
    h = L.Conv1D(4, 3, padding="causal", activation="relu", name="c1")(inp)
    h = L.Conv1D(4, 3, strides=2, name="c2")(h)
    return keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(h)))


def recurrent():
    inp = keras.Input((5, 3))
    h = L.LSTM(4, return_sequences=True, name="lstm")(inp)
    h = L.GRU(4, name="gru")(h)
    return keras.Model(inp, L.Dense(3, name="out")(h))


def attention():
    inp = keras.Input((4, 6))
    h = L.MultiHeadAttention(2, 3, name="mha")(inp, inp)
    return keras.Model(inp, L.Dense(3, name="out")(L.GlobalAveragePooling1D()(h)))


def masked():
    inp = keras.Input((6,), dtype="int32")
    h = L.Embedding(10, 4, mask_zero=True, name="emb")(inp)
    h = L.LSTM(4, name="lstm")(h)
    return keras.Model(inp, L.Dense(3, name="out")(h))


def twice():
    inp = keras.Input((6,))
    shared = L.Dense(6, activation="tanh", name="shared")
    h = shared(shared(inp))
    return keras.Model(inp, L.Dense(3, name="out")(h))


def nested():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu", name="d1"),
                              L.Dense(4, name="d2")], name="inner")
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(3, name="out")(inner(inp)))


def multi_io():
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = L.Concatenate()([L.Dense(4, name="da")(a), L.Dense(4, name="db")(b)])
    h = L.Dense(5, activation="relu", name="trunk")(h)
    return keras.Model([a, b], [L.Dense(3, name="o1")(h), L.Dense(2, name="o2")(h)])


def zoo():
    """All of the above in one model (one compile per step, for the test's time budget):
    three inputs (image, sequence, padded tokens: their mean over the unmasked ones), two
    outputs."""
    img, seq = keras.Input((6, 6, 2), name="img"), keras.Input((5, 3), name="seq")
    tok = keras.Input((6,), dtype="int32", name="tok")
    h = L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, padding="same", name="c1")(img))
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(L.ReLU()(h))
    h = L.SeparableConv2D(4, 3, padding="same", name="sep")(h)
    h = L.BatchNormalization(name="bn2")(L.Conv2D(4, 3, groups=2, use_bias=False,
                                                  name="grouped")(h))
    s = L.Conv1D(4, 3, padding="causal", activation="relu", name="c1d")(seq)
    s = L.LSTM(4, return_sequences=True, name="lstm")(s)
    a = L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 2, name="mha")(s, s))
    t = L.GlobalAveragePooling1D()(L.Embedding(10, 3, mask_zero=True, name="emb")(tok))
    h = L.Concatenate()([L.GlobalAveragePooling2D()(h), L.GRU(3, name="gru")(s), a, t])
    inner = keras.Sequential([keras.Input((14,)), L.Dense(6, activation="relu", name="d1"),
                              L.Dense(6, name="d2")], name="inner")
    shared = L.Dense(6, activation="tanh", name="shared")
    h = shared(shared(inner(h)))  # a layer called twice
    return keras.Model([img, seq, tok], [L.Dense(3, name="o1")(h), L.Dense(2, name="o2")(h)])


ARCHS = {"conv_bn": (conv_bn, (6, 6, 2)), "convs": (convs, (6, 6, 4)),
         "conv1d": (conv1d, (8, 3)), "recurrent": (recurrent, (5, 3)),
         "attention": (attention, (4, 6)), "masked": (masked, "tokens"),
         "twice": (twice, (6,)), "nested": (nested, (6,)), "multi_io": (multi_io, "multi"),
         "mixed": (conv_bn, (6, 6, 2)), "zoo": (zoo, "zoo")}


def make(name, seed=0):
    if name == "mixed":
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            return _seeded(ARCHS[name][0](), seed)
        finally:
            keras.mixed_precision.set_global_policy("float32")
    return _seeded(ARCHS[name][0](), seed)


def data(name, n=24, seed=1):
    rng = np.random.default_rng(seed)
    shape = ARCHS[name][1]
    if shape == "tokens":  # padded sequences: trailing zeros are masked
        x = rng.integers(1, 10, (n, 6)).astype(np.int32)
        for i in range(n):
            x[i, 2 + i % 4:] = 0
        return x, (x[:, 0] % 3).astype(np.int64)
    if shape == "zoo":  # image, sequence, padded tokens; two labels
        img, (seq, _), (tok, _) = (rng.standard_normal((n, 6, 6, 2)).astype(np.float32),
                                   data("recurrent", n, seed + 1), data("masked", n, seed + 2))
        return [img, seq, tok], [(img[:, :3].sum((1, 2, 3)) > 0).astype(np.int64)
                                 + (seq[:, -1, 0] > 0.5), tok[:, 0] % 2]
    if shape == "multi":
        x = [rng.standard_normal((n, 6)).astype(np.float32),
             rng.standard_normal((n, 4)).astype(np.float32)]
        return x, [(x[0][:, 0] > 0).astype(np.int64) + (x[1][:, 0] > 0),
                   (x[0][:, 1] > 0).astype(np.int64)]
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1)[:, :3].sum(1) > 0).astype(np.int64) + (x.reshape(n, -1)[:, -1] > 0.5)
    return x, y


def take(x, n):
    return [a[:n] for a in x] if isinstance(x, list) else x[:n]


def loss_of(m):
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return [sce, sce] if len(m.outputs) > 1 else sce


def fisher_loss(m):
    """One loss of all outputs (what Fisher weighting takes for a multi-output model)."""
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if len(m.outputs) == 1:
        return sce
    return lambda ys, ps: sum(sce(a, b) for a, b in zip(ys, ps))


def compile_(m, lr=0.05):
    m.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss=loss_of(m))


def outputs(m, x):
    """Outputs at batch 1 and 3 (predict, then a direct call), flattened float64 lists."""
    out = {}
    for n in (1, 3):
        y = m.predict(take(x, n), verbose=0)
        direct = m(take(x, n), training=False)
        ys = y if isinstance(y, list) else [y]
        ds = direct if isinstance(direct, (list, tuple)) else [direct]
        out[f"b{n}"] = np.concatenate([np.asarray(v, np.float64).ravel() for v in ys]).tolist()
        out[f"b{n}_call"] = np.concatenate([np.asarray(keras.ops.convert_to_numpy(v),
                                                       np.float64).ravel() for v in ds]).tolist()
    return out


def palette_checks(plain, palettes):
    """Per palette: whether the stripped kernel is exactly its decode, distinct values."""
    by_name = {}
    for layer in dkm_tf.graph.clusterable.walk_layers(plain):
        by_name.setdefault(layer.name, layer)
    out = {}
    for p in palettes:
        layer = by_name[p.layer_name]
        var = layer
        for part in p.weight_name.split("."):
            var = getattr(var, part)
        kernel = np.asarray(keras.ops.convert_to_numpy(var))
        out[f"{p.layer_name}/{p.weight_name}"] = {
            "unique": int(np.unique(kernel).size), "groups": int(p.codebook.shape[0]),
            "n_clusters": int(p.codebook.shape[1]),
            "decoded_equal": bool(np.array_equal(
                p.decode().reshape(kernel.shape).astype(kernel.dtype), kernel))}
    return out


def flat(y):
    """Outputs (one array or a list of them) as one flat float64 list."""
    return np.concatenate([np.asarray(keras.ops.convert_to_numpy(v), np.float64).ravel()
                           for v in (y if isinstance(y, (list, tuple)) else [y])]).tolist()


def np_sce(logits, y):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def np_penalty(m, lam=0.05):
    """(lam/2) sum ||w - mean of its cluster||^2 over the regularized weights (numpy)."""
    total = 0.0
    for var, reg in dkm_tf.training.attach.kmeans_regularizers(m):
        w = np.asarray(keras.ops.convert_to_numpy(var), np.float64).reshape(-1)
        a = np.asarray(reg.assignment)
        total += sum(float(np.sum((w[a == j] - w[a == j].mean()) ** 2)) for j in np.unique(a))
    return 0.5 * lam * total


def penalty_in_loss(m, x, y):
    """evaluate's loss minus the numpy data loss (the penalty the compiled step adds), the
    numpy penalty, and the number of regularized weights."""
    compile_(m, 0.0)
    loss = float(np.ravel(m.evaluate(x, y, batch_size=len(np.asarray(y[0] if isinstance(
        y, list) else y)), verbose=0))[0])
    pred = m.predict(x, verbose=0)
    data_loss = sum(np_sce(p, t) for p, t in zip(*((pred, y) if isinstance(y, list)
                                                     else ([pred], [y]))))
    return {"penalty_in_loss": loss - data_loss, "reference": np_penalty(m),
            "n_regularized": len(dkm_tf.training.attach.kmeans_regularizers(m))}


def weights_of(m):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in m.weights]


def untouched(name, m):
    ref = make(name)
    return bool(len(m.weights) == len(ref.weights) and all(
        np.array_equal(a, b) for a, b in zip(weights_of(m), weights_of(ref))))


def run_arch(name, save_dir):
    x, y = data(name)
    out = {}
    m = make(name)
    out["float"] = outputs(m, x)
    # hard wrapper + fit + strip
    wrapped = dkm_tf.cluster_weights(m, n_clusters=K, seed=0)
    compile_(wrapped)
    hist = wrapped.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    out["hard_loss"] = hist.history["loss"]
    out["hard_wrapped"] = outputs(wrapped, x)
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    out["hard_plain"] = outputs(plain, x)
    out["hard_palettes"] = palette_checks(plain, palettes)
    if save_dir:  # exported by a TensorFlow process: export_saved
        for what, model_ in (("plain", plain), ("wrapped", wrapped)):
            model_.save(os.path.join(save_dir, f"{name}_{what}.keras"))
            out[f"saved_{what}_b4"] = flat(model_.predict(take(x, 4), verbose=0))
    # soft wrapper
    soft = dkm_tf.cluster_weights(m, n_clusters=K, seed=0, assignment="soft", temperature=0.05)
    compile_(soft)
    hist = soft.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    out["soft_loss"] = hist.history["loss"]
    splain, spal = dkm_tf.strip_clustering(soft)
    out["soft_plain"] = outputs(splain, x)
    out["soft_palettes"] = palette_checks(splain, spal)
    # post-training sharing, plain and Fisher
    shared, pal, skipped = dkm_tf.share_weights(m, n_clusters=K, seed=0)
    out["share"] = outputs(shared, x)
    out["share_palettes"] = palette_checks(shared, pal)
    out["share_skipped"] = [str(s) for s in skipped]
    try:
        fisher, fpal, _ = dkm_tf.share_weights(m, n_clusters=K, seed=0, weighting="fisher",
                                               data=(x, y), loss=fisher_loss(m))
        out["fisher"] = outputs(fisher, x)
        out["fisher_palettes"] = palette_checks(fisher, fpal)
    except ValueError as e:  # several outputs: refused (the model's predicted class)
        out["fisher_refused"] = str(e)[:300]
    # regularizer + RefreshKMeans, on a copy: the penalty in the compiled loss = numpy's
    reg = make(name)
    dkm_tf.attach_regularizer(reg, n_clusters=K, lam=0.05, unit="scalar", include_dense=True,
                              seed=0)
    out["reg_attached"] = penalty_in_loss(reg, x, y)
    compile_(reg)
    cb = dkm_tf.RefreshKMeans(every_n_epochs=1, log_penalty="epoch")
    hist = reg.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
    out["reg_loss"] = hist.history["loss"]
    out["reg_penalty"] = hist.history.get("kmeans_penalty")
    out["reg_eager"] = float(sum(np.asarray(keras.ops.convert_to_numpy(v)) for v in reg.losses))
    out["reg_refreshed"] = penalty_in_loss(reg, x, y)
    # finetune (Adam; one batch per epoch: fit's shuffled order differs between backends)
    # and distillation from a teacher
    plain, _, hist = dkm_tf.finetune(m, (x, y), n_clusters=K, epochs=2, batch_size=len(y[0] if
                                     isinstance(y, list) else y),
                                     learning_rate=0.01, seed=0, metrics=[
                                         "accuracy"] * len(m.outputs))
    out["finetune_loss"] = hist.history["loss"]
    out["finetune"] = outputs(plain, x)
    if len(m.outputs) == 1:
        teacher = make(name, seed=3)
        targets = dkm_tf.distillation_targets(teacher, x, y)
        student = dkm_tf.cluster_weights(m, n_clusters=K, seed=0)
        student.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05),
                        loss=dkm_tf.DistillationLoss(num_classes=3, temperature=2.0, alpha=0.3))
        hist = student.fit(x, targets, batch_size=8, epochs=1, shuffle=False, verbose=0)
        out["distill_loss"] = hist.history["loss"]
        out["distill"] = outputs(dkm_tf.strip_clustering(student)[0], x)
    out["untouched"] = untouched(name, m)
    return out


def calls(m, x, sizes=(1, 3)):
    """Outputs of direct calls at each batch size (no predict: no compile on JAX)."""
    return {f"b{n}": flat(m(take(x, n), training=False)) for n in sizes}


def run_quick(name, save_dir):
    """What tests/test_backend_jax17.py runs (one train compile per fit, direct calls):
    cluster_weights + fit + strip, the .keras files for export_saved, share_weights; with a
    single output also Fisher-weighted sharing."""
    x, y = data(name)
    m = make(name)
    out = {"float": calls(m, x)}
    wrapped = dkm_tf.cluster_weights(m, n_clusters=K, seed=0)
    compile_(wrapped)
    out["hard_loss"] = wrapped.fit(x, y, batch_size=8, epochs=2, shuffle=False,
                                   verbose=0).history["loss"]
    out["hard_wrapped"] = calls(wrapped, x)
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    out["hard_plain"] = calls(plain, x)
    out["hard_palettes"] = palette_checks(plain, palettes)
    if save_dir:  # exported by a TensorFlow process: export_saved
        for what, model_ in (("plain", plain), ("wrapped", wrapped)):
            model_.save(os.path.join(save_dir, f"{name}_{what}.keras"))
            out[f"saved_{what}_b4"] = flat(model_(take(x, 4), training=False))
    shared, pal, skipped = dkm_tf.share_weights(m, n_clusters=K, seed=0)
    out["share"], out["share_palettes"] = calls(shared, x), palette_checks(shared, pal)
    out["share_skipped"] = [str(s) for s in skipped]
    if len(m.outputs) == 1:
        fisher, fpal, _ = dkm_tf.share_weights(m, n_clusters=K, seed=0, weighting="fisher",
                                               data=(x, y), loss=fisher_loss(m))
        out["fisher"], out["fisher_palettes"] = calls(fisher, x), palette_checks(fisher, fpal)
    out["untouched"] = untouched(name, m)
    return out


def export_saved(save_dir, name):
    """TensorFlow process: load a model stripped and saved on another backend, compare its
    outputs with that backend's, and export it (palettized) at batch 1 and 4."""
    import dkm_tf.export  # noqa: PLC0415 (TensorFlow only)
    from dkm_tf.export import verify  # noqa: PLC0415

    x, _ = data(name)
    out = {}
    for what in ("plain", "wrapped"):
        m = dkm_tf.load_model(os.path.join(save_dir, f"{name}_{what}.keras"))
        out[f"loaded_{what}_b4"] = flat(m.predict(take(x, 4), verbose=0))
        if what == "wrapped":
            m, palettes = dkm_tf.strip_clustering(m)
            out["wrapped_stripped_b4"] = flat(m.predict(take(x, 4), verbose=0))
        else:
            palettes = dkm_tf.palettes_of(m, max_clusters=K)
        out[f"{what}_palettes"] = len(palettes)
        path = os.path.join(save_dir, f"{name}_{what}.tflite")
        inputs = [np.asarray(a) for a in (take(x, 4) if isinstance(x, list) else [take(x, 4)])]
        try:
            dkm_tf.export.to_tflite(m, path, format="palettized", palettes=palettes,
                                    sample_inputs=inputs if len(inputs) > 1 else inputs[0])
        except ValueError as e:  # mixed_float16: refused, the message says what to do
            out[f"{what}_export_refused"] = str(e)[:300]
            continue
        with open(path, "rb") as f:
            content = f.read()
        got = verify.run_tflite(content, [a[:1] for a in inputs], batch=1)
        out[f"{what}_tflite_b1"] = flat(got)
        got = verify.run_tflite(content, inputs, batch=1)
        out[f"{what}_tflite_b4"] = flat(got)
    return out


def main(save_dir, names):
    results = {"backend": keras.backend.backend()}
    mode = names[0] if names and names[0].startswith("--") else "--full"
    names = names[1:] if names and names[0].startswith("--") else names
    run = {"--export": export_saved, "--quick": run_quick, "--full": run_arch}[mode]
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = run(name, save_dir)
        except Exception:
            results[name] = {"error": traceback.format_exc()[-4000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1] if sys.argv[1] != "-" else None, sys.argv[2:] or sorted(ARCHS))
