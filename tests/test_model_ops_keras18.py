"""What Keras users do to a clustered model besides fit / save / load, and frozen layers.

``model.quantize`` after clustering, ``set_weights`` into a model whose wrappers were first
built in a traced call, ``clone_model`` / ``from_config`` / ``model_from_json`` / ``save_weights``
into a twin / ``model.export`` (hard, soft and kernel clustering), XLA fits, and frozen convs
under kernel clustering (one codebook variable shared by a group). Tiny models, batch 1 and 3.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dkm_tf
from tests.testing import holds_a_wrapper

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 6, 6, 2)).astype(np.float32)
Y = RNG.integers(0, 3, 6)
KINDS = {"hard": {}, "soft": {"assignment": "soft", "temperature": 1e-2},
         "kernel": {"unit": "kernel", "codebook": "shared"}}


def _convnet(frozen=()):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    h = keras.layers.Conv2D(4, 3, name="c2")(h)
    outputs = keras.layers.Dense(3, name="d")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    for name in frozen:
        model.get_layer(name).trainable = False
    return model


def _fit(model, jit_compile=False, epochs=2):
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    return model.fit(X, Y, batch_size=3, epochs=epochs, shuffle=False, verbose=0).history["loss"]


def _stripped_kernel(model, name):
    plain, _ = dkm_tf.strip_clustering(model)
    return keras.ops.convert_to_numpy(plain.get_layer(name).kernel)


# ----------------------------------------------------------------------------- model.quantize
@pytest.mark.parametrize("kind", ["hard", "soft"])  # Keras 3.15 quantizes no Conv2D
def test_quantize_after_clustering_is_refused_by_name(kind):
    # model.quantize reaches the layer inside the wrapper: it then computed with an int8 copy
    # of the pre-clustering float kernel (a hard Dense model: 0.49 off the clustered outputs,
    # 0.017 for strip-then-quantize), silently
    model = dkm_tf.cluster_weights(_convnet(), 4, **KINDS[kind])
    model(X[:1])
    with pytest.warns(UserWarning, match="quantize"):  # Keras: layers it cannot quantize
        model.quantize("int8")
    with pytest.raises(ValueError, match=r"was quantized.*strip_clustering\(model\)"):
        model(X[:1])
    with pytest.raises(ValueError, match="was quantized"):  # its copy would be wrong too
        dkm_tf.strip_clustering(model)


# ------------------------------------------------------------------ deferred k-means, set_weights
class TwoWrappers(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = dkm_tf.ClusterWeights(keras.layers.Dense(4), n_clusters=3)
        self.b = dkm_tf.ClusterWeights(keras.layers.Dense(2), n_clusters=3)

    def call(self, x):
        return self.b(self.a(x))


def test_set_weights_after_a_traced_first_call_is_not_overwritten_by_kmeans():
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    keras.utils.set_random_seed(0)
    src = TwoWrappers()
    src(x)
    for wrapper in (src.a, src.b):  # trained codebooks: k-means of the kernel would differ
        wrapper.trainable_weights[0].assign(wrapper.trainable_weights[0] + 0.1)
    ref = keras.ops.convert_to_numpy(src(x))
    keras.utils.set_random_seed(1)
    model = TwoWrappers()
    with pytest.raises(RuntimeError, match="eagerly"):  # k-means needs values: deferred
        tf.function(lambda t: model(t))(x)
    model.set_weights(src.get_weights())
    # k-means deferred from the traced build ran at the next eager call over the set
    # codebooks: 0.53 off before
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x[:1])), ref[:1], atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), ref, atol=1e-6)


@pytest.mark.parametrize("fmt", ["keras", "weights"])
def test_saving_before_the_first_eager_call_saves_the_clusters(fmt, tmp_path):
    # a Functional model builds the custom layer in a traced pass: k-means waits for the
    # first eager call; saved before it, the file held zero codebooks (outputs: the bias)
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, holds_a_wrapper()()(inputs))
    if fmt == "keras":
        model.save(tmp_path / "m.keras")
        with pytest.warns(UserWarning, match="does not have a `build"):  # Keras: no build()
            loaded = dkm_tf.load_model(tmp_path / "m.keras")
    else:
        model.save_weights(tmp_path / "m.weights.h5")
        keras.utils.set_random_seed(1)
        loaded = keras.Model(inputs, holds_a_wrapper()()(inputs))
        loaded(x[:1])
        loaded.load_weights(tmp_path / "m.weights.h5")
    ref = keras.ops.convert_to_numpy(model(x))
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), ref, atol=1e-6)


# ------------------------------------------------------------------ kernel clustering, frozen
def test_kernel_clustering_refuses_a_group_of_frozen_and_trainable_convs():
    # the frozen c1 shared its codebook with c2: its kernel moved 0.16 in two epochs
    with pytest.raises(ValueError, match=r"frozen \['c1'\] and trainable \['c2'\].*"
                                         r"codebook=\[\['c1'\], \['c2'\]\]"):
        dkm_tf.cluster_weights(_convnet(frozen=("c1",)), 4, unit="kernel", codebook="shared")


def test_kernel_clustering_keeps_a_frozen_group_fixed_and_reports_it():
    model, report = dkm_tf.cluster_weights(_convnet(frozen=("c1",)), 4, unit="kernel",
                                           codebook=[["c1"], ["c2"]], return_report=True)
    assert {name: cfg["frozen"] for name, _, cfg in report.clustered} == {"c1": True,
                                                                          "c2": False}
    assert "c1" in report.summary() and "frozen (trainable=False)" in report.summary()
    c1, c2 = _stripped_kernel(model, "c1"), _stripped_kernel(model, "c2")
    _fit(model)
    np.testing.assert_array_equal(_stripped_kernel(model, "c1"), c1)  # 0.089 off before
    assert np.abs(_stripped_kernel(model, "c2") - c2).max() > 1e-3  # the trainable one trains


def test_kernel_clustering_frozen_after_wrapping_sends_no_gradient_to_the_codebook():
    model = dkm_tf.cluster_weights(_convnet(), 4, unit="kernel", codebook="shared")
    for name in ("cluster_c1", "cluster_c2"):
        model.get_layer(name).trainable = False
    c1 = _stripped_kernel(model, "c1")
    assert not model.get_layer("codebook_kernel_3x3").trainable  # frozen with its convs
    _fit(model)
    np.testing.assert_array_equal(_stripped_kernel(model, "c1"), c1)  # 0.16 off before


# ------------------------------------------------------------------ what already works: kept so
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_copies_and_exports_compute_the_shared_kernel(kind, tmp_path):
    model = dkm_tf.cluster_weights(_convnet(), 4, **KINDS[kind])
    ref = keras.ops.convert_to_numpy(model(X[:3]))
    copies = {"clone_model": keras.models.clone_model(model),
              "from_config": keras.Model.from_config(model.get_config()),
              "model_from_json": keras.models.model_from_json(model.to_json())}
    for name, copy in copies.items():
        copy.set_weights(model.get_weights())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(copy(X[:3])), ref, atol=1e-6,
                                   err_msg=name)
    model.save_weights(tmp_path / "w.weights.h5")
    twin = dkm_tf.cluster_weights(_convnet(), 4, **KINDS[kind])
    twin.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(twin(X[:1])), ref[:1], atol=1e-6)
    model.export(tmp_path / "served", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "served"))  # kept: .serve reads its variables
    served = loaded.serve(X[:3]).numpy()
    np.testing.assert_allclose(served, ref, atol=1e-5)  # the shared kernel, not the float one


@pytest.mark.parametrize("kind", ["hard", "kernel"])  # soft: same, but 17 s of XLA compile
def test_xla_fit_matches_the_plain_fit(kind):
    losses, weights = [], []
    for jit in (False, True):
        model = dkm_tf.cluster_weights(_convnet(), 4, **KINDS[kind])
        losses.append(_fit(model, jit_compile=jit, epochs=1))
        weights.append(model.get_weights())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for a, b in zip(*weights):
        np.testing.assert_allclose(b, a, atol=1e-5)
