"""What the training functions learn of a ``tf.data.Dataset`` before ``fit`` without losing a
batch of it: a ``from_generator`` dataset over a one-shot Python generator does not give again
what a read took (tf.data prefetches, so one ``next(iter(data))`` took 1 or 2 batches).

* :func:`output_shape`: a model's output shape (for ``train_classifier``'s loss), from the
  dataset's ``element_spec`` (a symbolic call, nothing read) where the model has none (a
  subclassed model): its read of one sample lost 1-2 of 4 batches before.
* :func:`keep_first_batch`: on Keras' JAX backend, a dataset whose ``element_spec`` has a
  component of unknown rank (``tf.TensorSpec(None)``) cannot build the model, compiled loss and
  metrics unread, and Keras' own build then read (and lost) the first batches (2 of 4
  trained): the first batch is read here and given back to training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["build_spec", "keep_first_batch", "output_shape"]


def _unknown_rank(tf, spec):
    return any(isinstance(s, tf.TensorSpec) and s.shape.rank is None
               for s in tf.nest.flatten(spec))


def build_spec(data):
    """The ``element_spec`` to build a model from for ``tf.data.Dataset`` ``data``: that of
    :func:`keep_first_batch`'s dataset gives the first batch's sizes."""
    spec = getattr(data, "dkm_tf_build_spec", None)
    return data.element_spec if spec is None else spec


def keep_first_batch(data):
    """``data`` itself, except on Keras' JAX backend for a ``tf.data.Dataset`` whose
    ``element_spec`` has a ``tf.TensorSpec`` of unknown rank and at least one element: then a
    dataset of the same elements whose spec gives each such component the first batch's rank
    (a later batch of another rank is an error of ``fit``, not a silent one), and whose
    ``dkm_tf_build_spec`` its sizes (batch dimension None), so that the model is built from
    it as Keras' ``fit`` built it from the first batch, and ``fit`` reads nothing to build.
    The first batch is read here; the new dataset's first pass gives it, then the rest of
    that same read (tf.data's prefetched batches included, so a one-shot generator loses
    none); a later pass reads ``data`` anew (a generator function's generator restarts; a
    one-shot generator gives no batch, as on TensorFlow)."""
    import keras  # noqa: PLC0415

    from dkm_tf.training.common import is_tf_dataset  # noqa: PLC0415

    if keras.backend.backend() != "jax" or not is_tf_dataset(data):
        return data
    import tensorflow as tf  # noqa: PLC0415

    if not _unknown_rank(tf, data.element_spec):
        return data
    reader = iter(data)
    try:
        first = next(reader)
    except StopIteration:  # no batch: fit_counted takes it as epochs of no batch
        return data

    def known(dims):
        def spec_of(s, t):
            if not (isinstance(s, tf.TensorSpec) and s.shape.rank is None):
                return s
            return tf.TensorSpec((None, *dims(t.shape[1:])) if t.shape.rank else (), s.dtype)
        return tf.nest.map_structure(spec_of, data.element_spec, first)

    spec = known(lambda rest: [None] * len(rest))  # its rank; any size (sequence lengths)
    passes = []

    def elements():
        passes.append(None)
        if len(passes) > 1:  # a later epoch: the data anew, as fit reads it
            yield from data
            return
        yield first
        yield from reader

    kept = tf.data.Dataset.from_generator(elements, output_signature=spec)
    cardinality = int(data.cardinality())
    if cardinality >= 0:  # known: fit's epochs keep knowing it
        kept = kept.apply(tf.data.experimental.assert_cardinality(cardinality))
    # the first batch's sizes, to build as Keras did; set on the dataset returned (apply gives
    # a new one: set before it, a known length lost it and Keras' build read the batches)
    kept.dkm_tf_build_spec = known(tuple)
    return kept


def output_shape(model, data):
    """``model``'s output shape: its ``output_shape``, or for a model without one (subclassed)
    that of its output on symbolic inputs of a ``tf.data.Dataset``'s ``element_spec`` (nothing
    read), else on one sample of ``data`` (arrays, a ``PyDataset``'s first batch; a dataset
    whose spec the model cannot be called on symbolically: read, as before, with a
    ``UserWarning``: a one-shot generator loses what the read took). Without it, a
    one-unit subclassed binary classifier was given a sparse cross-entropy: an error on
    TensorFlow and PyTorch, silently no training on JAX. None when unknown (``fit`` then says
    why: on TensorFlow a spec of unknown rank, which is not read)."""
    import keras  # noqa: PLC0415

    from dkm_tf.training.common import is_tf_dataset  # noqa: PLC0415

    shape = getattr(model, "output_shape", None) if getattr(model, "built", False) else None
    if shape is not None:
        return shape
    if is_tf_dataset(data):
        import tensorflow as tf  # noqa: PLC0415

        spec = build_spec(data)
        spec = spec[0] if isinstance(spec, tuple) else spec
        if _unknown_rank(tf, spec):
            return None  # TensorFlow's fit refuses it; on JAX keep_first_batch gave shapes
        try:
            x = tf.nest.map_structure(
                lambda s: keras.KerasTensor(tuple(s.shape.as_list()), s.dtype.name), spec)
            out = model(x, training=False)
            return tuple(out.shape) if hasattr(out, "shape") else None
        except Exception as e:  # noqa: BLE001 - a model that needs values: read one sample
            _warn_read(model, e)
    try:
        x = data[0] if isinstance(data, tuple) else (
            data[0] if isinstance(data, keras.utils.PyDataset) else next(iter(data)))[0]
        out = model(keras.tree.map_structure(lambda a: np.asarray(a)[:1], x), training=False)
    except Exception:  # noqa: BLE001 (data or model that fit rejects: it says why)
        return None
    return tuple(out.shape) if hasattr(out, "shape") else None


def _warn_read(model, error):
    """The ``UserWarning`` of :func:`output_shape`'s read of a dataset's first batch."""
    import warnings  # noqa: PLC0415

    from dkm_tf.training.wrapper_extras import user_stacklevel  # noqa: PLC0415

    warnings.warn(
        f"train_classifier read the first batch of the tf.data.Dataset for the output shape of "
        f"model {model.name!r}, which has none (subclassed) and could not be called on "
        f"symbolic inputs of the dataset's element_spec ({type(error).__name__}: "
        f"{str(error)[:120]}); a from_generator dataset over a one-shot Python generator does "
        "not give that batch (two with tf.data's prefetch) to training: build the model first "
        "(call it on one batch), or pass a generator function", UserWarning,
        stacklevel=user_stacklevel())
