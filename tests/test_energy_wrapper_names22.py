"""Energy of a saved, unstripped clustered model whose layer names clash with wrapper names.

Session 22 let ``cluster_weights`` wrap a model holding layers ``fc`` and ``cluster_fc``
(wrappers ``cluster_fc`` and ``cluster_cluster_fc``). ``energy.estimate`` of such a model saved
before ``strip_clustering`` keyed the second wrapper's palette by its layer's name
``cluster_fc``, the record name of the first wrapper, found no record of its size, and charged
it as float (paper total 7,825 MACs-units vs 5,533 for the same model stripped). The
estimate of the wrapped file must equal the stripped file's, layer by layer.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
import dkm_tf  # noqa: E402
from dkm_tf import energy  # noqa: E402


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    x = keras.layers.Dense(32, name="fc")(inp)
    x = keras.layers.Dense(24, name="cluster_fc")(x)
    return keras.Model(inp, keras.layers.Dense(4, name="out")(x))


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def test_wrapped_file_with_clashing_names_is_charged_like_the_stripped_file(tmp_path):
    clustered = _first(dkm_tf.cluster_weights(_model(), 4))
    clustered(np.zeros((1, 16), "float32"))
    stripped = _first(dkm_tf.strip_clustering(clustered))
    clustered.save(tmp_path / "wrapped.keras")
    stripped.save(tmp_path / "stripped.keras")
    wrapped = energy.estimate(str(tmp_path / "wrapped.keras"))
    plain = energy.estimate(str(tmp_path / "stripped.keras"))
    assert [r.n_clusters for r in wrapped.layers] == [r.n_clusters for r in plain.layers]
    assert [r.n_clusters for r in plain.layers] == [4, 4, 4]
    assert wrapped.paper_total == pytest.approx(plain.paper_total, rel=1e-12)


def test_a_nested_wrapper_named_like_a_float_top_layer_keeps_its_own_record(tmp_path):
    # review: a nested model's clustered `c` (wrapper `cluster_c`, record `cluster_c#2`)
    # beside a float top layer `cluster_c` of the same size: matching by the wrapper's name
    # first charged the float layer at K=4 and the clustered one as float (237,770 vs 304,970)
    keras.utils.set_random_seed(0)
    i2 = keras.Input((8, 8, 4))
    inner = keras.Model(i2, keras.layers.Conv2D(4, 3, name="c")(i2), name="inner")
    i = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(4, 3, name="cluster_c")(i)
    x = keras.layers.Conv2D(4, 3, name="mid")(x)
    x = keras.layers.ZeroPadding2D(1)(keras.layers.MaxPooling2D()(x))
    model = keras.Model(i, keras.layers.Flatten()(inner(x)))
    clustered = _first(dkm_tf.cluster_weights(model, 4, overrides={"cluster_c": None}))
    stripped = _first(dkm_tf.strip_clustering(clustered))
    clustered.save(tmp_path / "wrapped.keras")
    stripped.save(tmp_path / "stripped.keras")
    wrapped = energy.estimate(str(tmp_path / "wrapped.keras"))
    plain = energy.estimate(str(tmp_path / "stripped.keras"))
    assert [r.n_clusters for r in plain.layers if r.shape.op.startswith("Conv")] == [None, 4, 4]
    assert [r.n_clusters for r in wrapped.layers] == [r.n_clusters for r in plain.layers]
    assert wrapped.paper_total == pytest.approx(plain.paper_total, rel=1e-12)
