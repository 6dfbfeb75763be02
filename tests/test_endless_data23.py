"""An endless ``tf.data.Dataset`` of unknown length (``repeat()`` then ``filter()``) given to
the post-training path (``weighting="fisher"``, ``fisher_importance``; ``refine=`` takes
arrays only) is refused before it is read: the training functions refused it already, the
post-training reader read it until memory ran out (no output in 90 s)."""

import numpy as np
import pytest

import dkm_tf

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

LIMIT = 2000  # elements read before the guard below stops a reader that never ends


def _model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def _endless():
    """``repeat().filter()``: cardinality unknown, never ends. The map raises after
    :data:`LIMIT` elements so that a reader which does not refuse it fails instead of hanging."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    count = {"n": 0}

    def guard(v):
        count["n"] += 1
        if count["n"] > LIMIT:
            raise RuntimeError("read past the guard: the dataset was not refused")
        return v

    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    ds = ds.map(lambda *a: tuple(tf.py_function(guard, [t], t.dtype) for t in a))
    ds = ds.filter(lambda *a: True).batch(8)
    assert int(ds.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    return ds, count, (x, y)


@pytest.mark.parametrize("call", ["fisher_importance", "fisher"])
def test_endless_dataset_is_refused_before_reading(call):
    m = _model()
    before = [w.copy() for w in m.get_weights()]
    ds, count, _ = _endless()
    run = {"fisher_importance": lambda: dkm_tf.fisher_importance(m, ds),
           "fisher": lambda: dkm_tf.share_weights(m, 4, weighting="fisher", data=ds)}[call]
    with pytest.raises(ValueError, match=r"data.*finite.*unknown length.*endless.*take\(n\)"):
        run()
    assert count["n"] == 0  # refused from its structure, nothing read
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))


def test_a_finite_filtered_dataset_is_still_read():
    m = _model()
    ds, _, (x, y) = _endless()
    finite = ds.take(2)  # ends after two batches of 8 (the 16 samples once): unknown length
    assert int(finite.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    got, ref = dkm_tf.fisher_importance(m, finite), dkm_tf.fisher_importance(m, (x, y))
    assert set(got) == set(ref) and len(ref) == 2
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6)
