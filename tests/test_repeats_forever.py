"""``repeats_forever`` judges a ``tf.data.Dataset`` of unknown length by walking its inputs
from the output back, without serializing the graph.

Two regressions of the graph-wide check it replaces: a finite dataset was refused when any
``.repeat()`` appeared anywhere and no ``.take`` did (a ``zip`` with an endless label stream
stops at its shortest input), and an endless ``take(n).repeat().filter(...)`` was let through
because a ``.take`` appeared somewhere. The serialization also copied every
``from_tensor_slices`` array (400 MB took seconds and doubled the peak memory).
"""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import dkm_tf
from dkm_tf.training.data_checks import repeats_forever

D = tf.data.Dataset
RNG = np.random.default_rng(0)
X = RNG.standard_normal((100, 8)).astype(np.float32)


def _keep(x, *rest):
    return tf.reduce_sum(x) > -1e9  # keeps every element, but the length becomes unknown


def _nonneg(i):
    return i >= 0


def _inner(i):
    return D.from_tensors(i).repeat().take(4)


def _unknown(ds):
    assert int(ds.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    return ds


def _labelled_halves():
    one = D.zip(D.from_tensor_slices(X[:50]).filter(_keep), D.from_tensors(np.int64(0)).repeat())
    two = D.zip(D.from_tensor_slices(X[50:]).filter(_keep), D.from_tensors(np.int64(1)).repeat())
    return one.concatenate(two).batch(16)


# Keras warns at the end of the first epoch of any dataset of unknown length (it learns the
# length by running out); the warning is Keras', not a sign of a wrong dataset.
@pytest.mark.filterwarnings("ignore:Your input ran out of data:UserWarning")
def test_a_zip_with_an_endless_label_stream_is_finite_and_trains():
    ds = _unknown(_labelled_halves())
    assert not repeats_forever(ds)  # was True: a repeat() somewhere and no take
    assert sum(int(b[0].shape[0]) for b in ds) == 100
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(2)], name="tiny")
    result = dkm_tf.compress(model, ds, method="finetune", finetune_epochs=1, n_clusters=4,
                             verbose=0)
    assert result.model is not None


def test_a_take_before_an_endless_repeat_does_not_end_it():
    ds = D.from_tensor_slices(X)
    assert repeats_forever(_unknown(ds.take(10).repeat().filter(_keep)))  # was False
    assert repeats_forever(_unknown(ds.take(10).repeat().filter(_keep).batch(4).prefetch(1)))


def test_repeat_counts_and_takes():
    ds = D.from_tensor_slices(X)
    assert repeats_forever(_unknown(ds.repeat().filter(_keep)))
    assert repeats_forever(_unknown(ds.repeat(-1).filter(_keep).map(lambda x: x * 2)))
    assert not repeats_forever(_unknown(ds.repeat(3).filter(_keep)))
    assert not repeats_forever(_unknown(ds.repeat().filter(_keep).take(5)))
    assert repeats_forever(_unknown(ds.repeat().filter(_keep).take(-1)))  # take(-1): all
    assert not repeats_forever(_unknown(ds.repeat().take_while(_keep).filter(_keep)))
    assert not repeats_forever(_unknown(ds.filter(_keep).repeat().filter(_keep).repeat(0)
                                        .filter(_keep)))
    assert repeats_forever(_unknown(ds.filter(_keep).repeat(2).repeat().filter(_keep)))


def test_one_input_steps_are_as_their_input():
    endless = D.from_tensor_slices(X).repeat().filter(_keep)
    steps = (endless.map(lambda x: x + 1).shuffle(8).batch(4).unbatch().cache().prefetch(1)
             .with_options(tf.data.Options()).skip(2).shard(2, 0))
    assert repeats_forever(_unknown(steps))
    assert repeats_forever(_unknown(endless.flat_map(D.from_tensors)))
    assert not repeats_forever(_unknown(D.from_tensor_slices(X).filter(_keep).map(tf.abs)))


def test_an_interleave_is_judged_by_its_outer_input():
    ds = D.range(3).interleave(_inner).filter(_nonneg)
    assert not repeats_forever(_unknown(ds))
    assert repeats_forever(_unknown(D.range(3).repeat().interleave(_inner).filter(_nonneg)))


def test_zip_concatenate_and_sampling():
    endless = D.from_tensor_slices(X).repeat().filter(_keep)
    finite = D.from_tensor_slices(X).filter(_keep)
    assert repeats_forever(_unknown(D.zip(endless, finite.repeat())))
    assert repeats_forever(_unknown(D.zip(endless, endless.map(tf.abs))))
    assert not repeats_forever(_unknown(D.zip(endless, finite)))
    assert repeats_forever(_unknown(finite.concatenate(endless)))
    assert repeats_forever(_unknown(endless.concatenate(finite)))
    assert not repeats_forever(_unknown(finite.concatenate(finite)))
    assert repeats_forever(_unknown(D.sample_from_datasets([endless, finite.repeat()])
                                    .filter(_keep)))
    # a finite one among them: it may stop there, or never be picked: not refused
    assert not repeats_forever(_unknown(D.sample_from_datasets([endless, finite])))
    choice = D.range(2).repeat()
    assert repeats_forever(_unknown(D.choose_from_datasets([endless, finite.repeat()], choice)
                                    .filter(_keep)))
    assert not repeats_forever(_unknown(D.choose_from_datasets([endless, finite], choice)))
    assert not repeats_forever(_unknown(D.choose_from_datasets([endless, endless],
                                                               D.range(2).filter(_nonneg))))


def test_endless_sources_and_what_cannot_be_judged():
    assert repeats_forever(_unknown(D.counter().filter(_nonneg)))

    def gen():
        yield from range(3)

    generated = D.from_generator(gen, output_signature=tf.TensorSpec((), tf.int64))
    assert not repeats_forever(_unknown(generated.filter(_nonneg)))
    assert repeats_forever(_unknown(generated.repeat().filter(_nonneg)))
    assert not repeats_forever(D.from_tensor_slices(X).repeat())  # infinite: refused elsewhere
    assert not repeats_forever(D.from_tensor_slices(X))
    assert not repeats_forever((X, X))


def test_a_long_chain_of_concatenates_is_walked():
    ds = D.range(3).filter(_nonneg)
    for _ in range(1100):  # deeper than Python's recursion limit
        ds = ds.concatenate(D.range(3))
    assert not repeats_forever(_unknown(ds))
    assert repeats_forever(_unknown(ds.concatenate(D.range(3).repeat()).filter(_nonneg)))


def test_large_arrays_are_not_serialized():
    big = np.ones((100 * 2**20 // 4 // 256, 256), np.float32)  # 100 MB
    ds = _unknown(D.from_tensor_slices(big).filter(_keep).batch(32))
    start = time.perf_counter()
    assert not repeats_forever(ds)
    assert time.perf_counter() - start < 0.5  # the serialized graph took ~0.45 s (400 MB: ~2 s)
