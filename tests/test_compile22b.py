"""Compile settings and class weights of the training entry points (session 22, helper H2).

``finetune`` / ``dkm_retrain(class_weight=...)`` against numpy references (per-sample weights
read from the true labels, distillation targets' labels half included) and Keras' own
``fit(class_weight=...)``; refusals before any k-means of what failed inside ``fit``
afterwards (class weights Keras cannot use, a PyDataset of layer-keyed label dicts, a
single loss with a list of ``loss_weights``). Tiny Dense models, fixed seeds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.training import finetune as finetune_mod  # noqa: E402
from dkm_tf.training import retrain as retrain_mod  # noqa: E402

K, N = 4, 48
CW = {0: 1.0, 1: 3.0, 2: 0.25}


def _data(n=N, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 6)).astype("float32")
    y = ((x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)).astype("int64")
    return x, y


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(loss=None, scale=1.0):
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h")(i)
    m = keras.Model(i, keras.layers.Dense(3, name="o")(h))
    if scale != 1.0:
        m.set_weights([w * scale for w in m.get_weights()])
    m.compile("adam", loss=loss or _sce(), metrics=["accuracy"])
    return m


def _two_heads(loss="list", weights=None):
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h")(i)
    m = keras.Model(i, [keras.layers.Dense(3, name="a")(h), keras.layers.Dense(3, name="b")(h)])
    if loss is not None:
        m.compile("adam", loss=_sce() if loss == "single" else [_sce(), _sce()],
                  loss_weights=weights)
    return m


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _clustered_logits(model, x):
    """The clustered copy's outputs before training (finetune's first step reads them)."""
    keras.utils.set_random_seed(0)
    return keras.tree.map_structure(np.asarray, dkm_tf.cluster_weights(model, K, seed=0)(x))


class _Py(keras.utils.PyDataset):
    def __init__(self, x, y, bs=N, w=None):
        super().__init__()
        self.x, self.y, self.bs, self.w = x, y, bs, w

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __getitem__(self, i):
        s = slice(i * self.bs, (i + 1) * self.bs)
        y = keras.tree.map_structure(lambda v: v[s], self.y)
        return (self.x[s], y) if self.w is None else (self.x[s], y, self.w[s])


@pytest.mark.parametrize("form", ["arrays", "dataset", "pydataset"])
def test_finetune_class_weight_equals_the_numpy_weighted_loss(form):
    # finetune took no class_weight; one batch of N: the first step's loss is the weighted
    # mean sum(w * CE) / N of the clustered model's logits (Keras' reduction)
    x, y = _data()
    data = {"arrays": (x, y), "dataset": tf.data.Dataset.from_tensor_slices(
        (x, y[:, None])).batch(N), "pydataset": _Py(x, y)}[form]
    _, _, hist = dkm_tf.finetune(_mlp(), data, n_clusters=K, epochs=1, batch_size=N,
                                 class_weight={1: 3.0, 2: 0.25})  # class 0 left out: 1
    z = _clustered_logits(_mlp(), x)
    w = np.array([CW[c] for c in y])
    want = np.sum(w * -_log_softmax(z)[np.arange(N), y]) / N
    np.testing.assert_allclose(hist.history["loss"][0], want, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 32])
def test_finetune_class_weight_equals_keras_fit(batch_size):
    # several steps, shuffled: the same losses as Keras' own fit(class_weight=...) on the
    # clustered model, with the compiled metrics kept
    x, y = _data()
    _, _, hist = dkm_tf.finetune(_mlp(), (x, y), n_clusters=K, epochs=2, seed=0,
                                 batch_size=batch_size, class_weight=CW)
    keras.utils.set_random_seed(0)
    c = dkm_tf.cluster_weights(_mlp(), K, seed=0)
    c.compile(keras.optimizers.Adam(1e-3), loss=_sce(), metrics=["accuracy"])
    ref = c.fit(x, y, batch_size=batch_size, epochs=2, verbose=0, class_weight=CW).history
    np.testing.assert_allclose(hist.history["loss"], ref["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(hist.history["accuracy"], ref["accuracy"], atol=1e-6)


def test_distillation_class_weight_reads_the_labels_half():
    # Keras' own class_weight takes the arg-max of all 2C columns: a teacher logit above 1
    # picks a teacher column (weight 1); finetune weighs by the true label
    x, y = _data()
    t = dkm_tf.distillation_targets(_mlp(scale=3.0), x, y)
    assert np.sum(t.argmax(1) != y) > 5  # Keras would misread these
    loss = dkm_tf.DistillationLoss(num_classes=3, temperature=2.0, alpha=0.5)
    _, _, hist = dkm_tf.finetune(_mlp(loss), (x, t), n_clusters=K, epochs=1, batch_size=N,
                                 class_weight=CW)
    z = _clustered_logits(_mlp(loss), x)
    hard = -_log_softmax(z)[np.arange(N), y]
    soft = -(np.exp(_log_softmax(t[:, 3:] / 2.0)) * _log_softmax(z / 2.0)).sum(1)
    per_sample = 0.5 * hard + 0.5 * 4.0 * soft
    w = np.array([CW[c] for c in y])
    np.testing.assert_allclose(hist.history["loss"][0], np.sum(w * per_sample) / N, rtol=1e-5)
    with pytest.raises(ValueError, match="class_weight.*PyDataset"):  # Keras would misread
        dkm_tf.dkm_retrain(_mlp(loss), _Py(x, t), n_clusters=K, epochs=1, class_weight=CW)


def test_class_weight_per_position_for_a_sequence_tagger(monkeypatch):
    # Keras' own class_weight takes the arg-max over the T positions (one weight per sample:
    # "Dimensions must be equal" inside fit); here each position weighs by its own class
    r = np.random.default_rng(1)
    x, y = r.normal(size=(16, 5, 4)).astype("float32"), r.integers(0, 3, size=(16, 5))

    def tagger():
        keras.utils.set_random_seed(0)
        i = keras.Input((5, 4))
        m = keras.Model(i, keras.layers.Dense(3, name="o")(keras.layers.Dense(8)(i)))
        m.compile("adam", loss=_sce())
        return m

    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    _, _, hist = dkm_tf.finetune(tagger(), data, n_clusters=K, epochs=1, class_weight=CW)
    z = _clustered_logits(tagger(), x)
    w = np.vectorize(CW.get)(y)
    ce = -np.take_along_axis(_log_softmax(z), y[..., None], -1)[..., 0]
    np.testing.assert_allclose(hist.history["loss"][0], np.mean(w * ce), rtol=1e-5)
    _refuse_before_kmeans(monkeypatch)  # a PyDataset would get Keras' reading: refused
    with pytest.raises(ValueError, match="class_weight.*PyDataset.*per position"):
        dkm_tf.finetune(tagger(), _Py(x, y, 8), n_clusters=K, epochs=1, class_weight=CW)


def test_dkm_retrain_class_weight_equals_per_sample_weights():
    x, y = _data()
    w = np.array([CW[c] for c in y], "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(N)
    kw = {"n_clusters": K, "epochs": 2, "lam": 0.1, "seed": 0}
    _, a = dkm_tf.dkm_retrain(_mlp(), (x, y), batch_size=N, class_weight=CW, **kw)
    _, b = dkm_tf.dkm_retrain(_mlp(), ds, **kw)
    _, c = dkm_tf.dkm_retrain(_mlp(), (x, y), batch_size=N, **kw)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    assert abs(a.history["loss"][0] - c.history["loss"][0]) > 0.05  # the weights count


def _refuse_before_kmeans(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("k-means ran before the refusal")
    monkeypatch.setattr(finetune_mod, "cluster_weights", boom)
    monkeypatch.setattr(retrain_mod, "attach_regularizer", boom)


@pytest.mark.parametrize("cw,err,match", [
    ([1.0, 2.0], TypeError, "type for argument `class_weight`"),
    ({}, ValueError, "at least one class"),
    ({3: 1.0}, ValueError, r"ids in \[0, 3\)"),
    ({-1: 1.0}, ValueError, "value for argument `class_weight`"),
    ({True: 2.0}, ValueError, "value for argument `class_weight`"),
    ({0: -1.0}, ValueError, "class 0"),
    ({0: float("nan")}, ValueError, "class 0"),
    ({0: "2"}, TypeError, "class 0"),
])
@pytest.mark.parametrize("fn", ["finetune", "dkm_retrain"])
def test_bad_class_weight_refused_before_any_kmeans(monkeypatch, fn, cw, err, match):
    _refuse_before_kmeans(monkeypatch)
    x, y = _data()
    call = getattr(dkm_tf, fn)
    with pytest.raises(err, match=match):
        call(_mlp(), (x, y), n_clusters=K, epochs=1, class_weight=cw)


def test_class_weight_refused_with_two_outputs_or_sample_weights(monkeypatch):
    # Keras refused both inside fit, after the k-means
    _refuse_before_kmeans(monkeypatch)
    x, y = _data()
    with pytest.raises(ValueError, match="class_weight.*2 outputs"):
        dkm_tf.finetune(_two_heads(), (x, [y, y]), n_clusters=K, class_weight=CW)
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(N, "float32"))).batch(16)
    for data in (ds, _Py(x, y, 16, np.ones(N, "float32"))):
        with pytest.raises(ValueError, match="class_weight.*sample_weight"):
            dkm_tf.dkm_retrain(_mlp(), data, n_clusters=K, class_weight=CW)
    ds = tf.data.Dataset.from_tensor_slices((x, {"o": y})).batch(16)  # one output, a dict
    with pytest.raises(ValueError, match="class_weight.*one array"):  # was a map error later
        dkm_tf.finetune(_mlp(), ds, n_clusters=K, class_weight=CW)


def test_pydataset_of_layer_keyed_labels_refused_before_any_kmeans(monkeypatch):
    # Keras failed inside fit, after the k-means: "Expected float32, but got a of type 'str'"
    _refuse_before_kmeans(monkeypatch)
    x, y = _data()
    with pytest.raises(ValueError, match=r"`train_data`.*\['a', 'b'\]"):
        dkm_tf.finetune(_two_heads(), _Py(x, {"a": y, "b": y}), n_clusters=K, epochs=1)
    with pytest.raises(ValueError, match="`val_data`"):
        dkm_tf.finetune(_two_heads(), (x, [y, y]), _Py(x, {"a": y, "b": y}), n_clusters=K,
                        epochs=1)


def test_single_loss_with_a_list_of_loss_weights_trains_weighted():
    # Keras refused compile(loss=one, loss_weights=[1, 0.5]) inside fit ("must match the
    # number of losses"), after the k-means; now one loss per output: CE_a + 0.5 CE_b
    x, y = _data()
    labels = [y, 2 - y]
    model = _two_heads("single", [1.0, 0.5])
    out, _, hist = dkm_tf.finetune(model, (x, labels), n_clusters=K, epochs=1, batch_size=N)
    _, rhist = dkm_tf.dkm_retrain(model, (x, labels), n_clusters=K, epochs=1, batch_size=N,
                                  lam=1e-12)  # the penalty adds nothing
    for h, (za, zb) in ((hist, _clustered_logits(model, x)),
                        (rhist, [np.asarray(v) for v in model(x)])):
        ce = [np.mean(-_log_softmax(z)[np.arange(N), t]) for z, t in ((za, y), (zb, 2 - y))]
        np.testing.assert_allclose(h.history["loss"][0], ce[0] + 0.5 * ce[1], rtol=1e-5)
    assert out.get_compile_config()["loss_weights"] == [1.0, 0.5]


def test_bad_loss_weights_refused_before_any_kmeans(monkeypatch):
    _refuse_before_kmeans(monkeypatch)
    x, y = _data()
    with pytest.raises(ValueError, match="`loss_weights`.*2 loss weight"):
        dkm_tf.finetune(_two_heads("single", [1.0, 0.5, 2.0]), (x, [y, y]), n_clusters=K)
    with pytest.raises(ValueError, match=r"`loss_weights`.*\['a', 'b'\]"):
        dkm_tf.dkm_retrain(_two_heads("single", {"a": 1.0, "c": 0.0}), (x, [y, y]),
                           n_clusters=K)


def test_dkm_retrain_uncompiled_two_heads_gets_accuracy_per_output():
    # it compiled ["accuracy"] for two outputs: "tuple arity mismatch" inside fit
    x, y = _data()
    _, hist = dkm_tf.dkm_retrain(_two_heads(None), (x, [y, 2 - y]), n_clusters=K, epochs=1,
                                 lam=1e-12, batch_size=N)
    za, zb = (np.asarray(v) for v in _two_heads(None)(x))
    np.testing.assert_allclose(hist.history["a_accuracy"][0], np.mean(za.argmax(1) == y),
                               atol=1e-6)
    np.testing.assert_allclose(hist.history["b_accuracy"][0], np.mean(zb.argmax(1) == 2 - y),
                               atol=1e-6)


def test_compress_passes_class_weight_and_checks_it_first(monkeypatch):
    x, y = _data()
    kw = {"n_clusters": K, "finetune_epochs": 1, "batch_size": 16, "verbose": 0, "seed": 0}
    got = dkm_tf.compress(_mlp(), (x, y), method="finetune", class_weight=CW, **kw).model
    want, _, _ = dkm_tf.finetune(_mlp(), (x, y), n_clusters=K, epochs=1, batch_size=16,
                                 learning_rate=1e-3, seed=0, class_weight=CW)  # K <= 4: 1e-3
    for a, b in zip(got.get_weights(), want.get_weights()):  # the class weights reach fit
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = dkm_tf.compress(_mlp(), (x, y), method="finetune", **kw).model  # review: both
    assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6)  # could have ignored the weights
               for a, b in zip(got.get_weights(), plain.get_weights()))
    weighed, fit = [], keras.Model.fit

    def counting_fit(self, *args, **kwargs):  # both stages of "dkm+finetune" weigh samples
        weighed.append(kwargs.get("sample_weight") is not None)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counting_fit)
    dkm_tf.compress(_mlp(), (x, y), method="dkm+finetune", class_weight=CW,
                    dkm_epochs=1, **kw)
    assert len(weighed) >= 2 and all(weighed), weighed
    monkeypatch.setattr(keras.Model, "fit", fit)
    _refuse_before_kmeans(monkeypatch)
    with pytest.raises(ValueError, match=r"`class_weight`.*method='wr'"):
        dkm_tf.compress(_mlp(), (x, y), method="wr", class_weight=CW, verbose=0)
    with pytest.raises(ValueError, match=r"`class_weight`.*\[0, 3\)"):  # before dkm_retrain
        dkm_tf.compress(_mlp(), (x, y), method="dkm+finetune", class_weight={5: 1.0},
                        verbose=0)
