"""Records of Keras layers `keras_reader` hands over: 3-D pooling, `Attention`, `Dot`, `Softmax`.

* `MaxPooling3D`, `AveragePooling3D`, `GlobalMaxPooling3D`, `GlobalAveragePooling3D`: a pooling
  record over the `(D·H) × W` map (the `.tflite` reader's layout of a 3-D global pooling, a
  MEAN / REDUCE_MAX over axes 1-3), window `(kd·kh) × kw`: the comparisons or additions of
  every window, as for 1-D and 2-D pooling.
* `Attention` (Luong dot-product attention of a query `(T_q, d)` and a value `(T_v, d_v)`, the
  key defaulting to the value): `<layer>/scores` (Q·Kᵀ, T_q positions, d inputs, T_v outputs:
  T_q·T_v·d MACs) and `<layer>/context` (softmax(scores)·V: T_q·T_v·d_v MACs), dense records
  whose "weights" are the keys and values (an activation fetched like a weight, as the
  `.tflite` reader's BATCH_MATMUL records and `MultiHeadAttention`'s). With `use_scale` the
  scaling of the scores is a "mul" over T_q·T_v values (2 inputs: a product with a scalar
  weight counts its operand as the `.tflite` reader and the Keras reader's other constant
  products do; 1 before 2026-12-06); the softmax is not priced.
  `AdditiveAttention` and `score_mode="concat"` (tanh of sums, no matmul for the scores):
  element-wise records, see `_additive_records`.
* `Dot` (two inputs of rank 2 or 3): a dense record per image, M = x's free axis positions,
  K = the contracted axis inputs, N = y's free axis outputs, as the file's BATCH_MATMUL; with
  `normalize=True` the L2 normalisation of its inputs is listed, not charged.
* `Softmax`: a lookup / transcendental function, not priced (as `Activation("softmax")`).
* `GroupNormalization`, `UnitNormalization`: element-wise records (`norm_records`).

A subclassed model nested in a Functional one records no layer shapes: `nested_subclassed`
traces it (`graph_reader`) at the input shape of its call in the outer graph.
"""

import math


def classify_more(layer, name, in_shapes, out_shape, keras, common):
    """`(records, reason)` of one of the layers above, or None for any other layer."""
    L = keras.layers
    if isinstance(layer, (L.MaxPooling3D, L.AveragePooling3D, L.GlobalMaxPooling3D,
                          L.GlobalAveragePooling3D)):
        return _pool3d(layer, name, tuple(in_shapes[0]), tuple(out_shape), L, common), None
    if isinstance(layer, L.Attention):
        return _attention(layer, name, in_shapes, common)
    if isinstance(layer, L.Dot):
        return _dot(layer, name, in_shapes, common)
    if isinstance(layer, L.Softmax):
        from dkm_tf.energy.activations import activation_records

        return activation_records(name, "softmax", math.prod(out_shape[1:]), **common)
    if isinstance(layer, L.Normalization):
        from dkm_tf.energy.keras_consts import normalization_records

        return normalization_records(layer, name, tuple(in_shapes[0]), out_shape, common)
    from dkm_tf.energy.norm_records import norm_records

    norm = norm_records(layer, name, tuple(in_shapes[0]), common)
    if norm is not None:
        return norm
    return _preprocessing(layer, tuple(in_shapes[0]), tuple(out_shape))


def _dot(layer, name, in_shapes, common):
    """`(records, reason)` of a `Dot` of two inputs of rank 2 or 3 (batch included): one
    dense record per image, as the `.tflite` reader reads the BATCH_MATMUL it converts to
    (x's free axis M positions, the contracted axis K inputs, y's free axis N outputs)."""
    from dkm_tf.energy import shapes as sh

    shapes = [tuple(s) for s in in_shapes]
    if len(shapes) != 2 or len(shapes[0]) != len(shapes[1]) or len(shapes[0]) not in (2, 3):
        return [], f"Dot of input shapes {shapes}: only two inputs of rank 2 or 3 are modelled"
    x, y = shapes
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
    ax, ay = (int(a) % len(x) for a in axes)
    if 0 in (ax, ay) or x[ax] != y[ay]:
        return [], f"Dot of input shapes {shapes} over axes {tuple(axes)} not modelled"
    m, n = (1, 1) if len(x) == 2 else (x[3 - ax], y[3 - ay])
    record = sh.dense_shape(name, in_features=x[ax], units=n, positions=m, **common)
    return [record], ("its inputs' L2 normalisation (normalize=True) is not charged"
                      if layer.normalize else None)


_AUGMENTATION = ("AugMix", "RandAugment", "CutMix", "MixUp")
_LOOKUPS = ("IntegerLookup", "StringLookup", "TextVectorization", "Hashing", "HashedCrossing",
            "CategoryEncoding", "Discretization")


def _preprocessing(layer, in_shape, out_shape):
    """`([], reason)` of an image augmentation / preprocessing layer, else None.

    A random augmentation layer (`RandomFlip`, `RandomRotation`, ... in a Keras tutorial's
    `data_augmentation` block) returns its input at inference, and the converted `.tflite` has
    no op for it: listed as such (was "unsupported layer type RandomFlip", as if the estimate
    missed a cost); lookups and encodings (`IntegerLookup`, `Hashing`, ...) as no MACs.
    `CenterCrop` shrinking its input is a slice (no compute); `Resizing` an
    interpolation, listed as not priced, as the `.tflite` reader lists RESIZE_BILINEAR."""
    cls = type(layer).__name__
    random = cls.startswith("Random") or cls in _AUGMENTATION
    if random and in_shape == out_shape:
        return [], (f"{cls}: random augmentation, an identity at inference (the .tflite has "
                    "no op for it), no compute")
    if cls == "CenterCrop" and all(o <= i for i, o in zip(in_shape[1:], out_shape[1:])):
        return [], "CenterCrop: a slice of its input, no compute"
    if cls in _LOOKUPS:
        return [], (f"{cls}: a lookup / index encoding of its inputs (integer or string "
                    "arithmetic), no MACs, not priced")
    if cls in ("Resizing", "CenterCrop"):
        return [], (f"{cls} {in_shape[1:]} -> {out_shape[1:]}: image interpolation, not "
                    "priced (a .tflite's RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR is listed too)")
    return None


def embedding_reason(layer, in_shape, out_shape):
    """Why an Embedding call has no record: a table lookup (integer ids in, ``output_dim``
    features out), or, for any other call of an Embedding subclass (a tied output projection
    such as keras_hub's ``ReversibleEmbedding(reverse=True)``: features in, ``input_dim``
    logits out, a matmul with the table), a reason saying it is not charged. Measured before
    2026-12-05: such a call was listed as "a table lookup, no MACs" (76 % of a tiny tied LM's
    6,336 MACs missing)."""
    lookup = (len(out_shape) == len(in_shape) + 1
              and out_shape[-1] == getattr(layer, "output_dim", None))
    if lookup:
        return "Embedding: a table lookup, no MACs"
    return (f"Embedding subclass called {tuple(in_shape)} -> {tuple(out_shape)}: not a table "
            "lookup (a tied output projection?); not modelled, not charged: estimate the "
            "exported .tflite for its MACs")


def nested_subclassed(layer, name, call, used):
    """`(records, skipped)` of one call of a subclassed model nested in a Functional one.

    Traced at the shape of the call's one input (`call` is `(inputs, outputs)`, or the
    exception saying it was not recorded); a record of a layer read before (a second call)
    is named `name#2`, ... (`used` counts the names); all tagged with `name`
    (`LayerShape.within`); all of a call's records move together
    (`record_names.calls_renamed`: `d#2`, `d#2/selu`, ...). Without a single fully known
    input, or on a backend other than TensorFlow, nothing is read and `skipped` says why.
    """
    why = "nested subclassed model: shapes not recorded"
    shapes = [] if isinstance(call, Exception) else [tuple(t.shape) for t in call[0]]
    if len(shapes) != 1 or any(d is None for d in shapes[0][1:]):
        return [], [(name, f"{why} (and not traced: its call has inputs {shapes})")]
    from dkm_tf.energy.traced_wrappers import read_traced

    try:
        records, skipped = read_traced(layer, shapes[0][1:])
    except (RuntimeError, ValueError) as e:
        return [], [(name, f"{why} (and not traced: {e})")]
    from dkm_tf.energy.record_names import calls_renamed, within

    return within(calls_renamed(records, used), name), list(skipped)


def _split(shape, channels_first):
    dims = [int(d) for d in shape[1:]]
    return (dims[1:], dims[0]) if channels_first else (dims[:-1], dims[-1])


def _pool3d(layer, name, in_shape, out_shape, L, common):
    from dkm_tf.energy import shapes as sh

    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    (d, h, w), c = _split(in_shape, first)
    op = "max" if isinstance(layer, (L.MaxPooling3D, L.GlobalMaxPooling3D)) else "avg"
    if isinstance(layer, (L.GlobalMaxPooling3D, L.GlobalAveragePooling3D)):
        return [sh.pool_shape(name, in_hw=(d * h, w), channels=c, out_hw=1, window=(d * h, w),
                              pool_op=op, **common)]
    (od, oh, ow), _ = _split(out_shape, first)
    kd, kh, kw = layer.pool_size
    sd, s_h, sw = layer.strides
    return [sh.pool_shape(name, in_hw=(d * h, w), channels=c, out_hw=(od * oh, ow),
                          window=(kd * kh, kw), strides=(sd * s_h, sw), pool_op=op, **common)]


def _attention(layer, name, in_shapes, common):
    from dkm_tf.energy import shapes as sh

    q, v = (tuple(in_shapes[i]) for i in (0, 1))
    if len(q) != 3 or len(v) != 3:
        return [], f"{type(layer).__name__} inputs {q}, {v} are not (batch, steps, features)"
    t_q, d, t_v, d_v = int(q[1]), int(q[2]), int(v[1]), int(v[2])
    context = sh.dense_shape(f"{name}/context", in_features=t_v, units=d_v, positions=t_q,
                             **common)
    scaled = bool(getattr(layer, "use_scale", False))
    if isinstance(layer, _additive()) or getattr(layer, "score_mode", "dot") == "concat":
        return _additive_records(layer, name, (t_q, t_v, d), scaled, common) + [context], (
            f"{type(layer).__name__} scores: tanh and the sum over features not priced")
    records = [sh.dense_shape(f"{name}/scores", in_features=d, units=t_v, positions=t_q,
                              **common), context]
    if scaled:
        records.append(sh.eltwise_shape(f"{name}/scale", elements=t_q * t_v, eltwise_op="mul",
                                        n_inputs=2, **common))  # a scalar weight: 2 inputs
    return records, None


def _additive():
    import keras

    return keras.layers.AdditiveAttention


def _additive_records(layer, name, dims, scaled, common):
    """Element-wise records of additive (Bahdanau) scores over the T_q·T_v·d broadcast sums.

    `AdditiveAttention` (a subclass of `Attention`): sum(scale · tanh(q + k)) over features,
    `scale` a d-vector with `use_scale`. `Attention(score_mode="concat")`:
    w · sum(tanh(s · (q + k))), `s` a scalar with `use_scale`, `w` a scalar. No matmul: was
    charged as Q·Kᵀ (T_q·T_v·d MACs) for `AdditiveAttention` before 2026-12-06; the `.tflite`
    of the same model has an ADD and a MUL (no MACs) there."""
    from dkm_tf.energy import shapes as sh

    t_q, t_v, d = dims
    n = t_q * t_v * d
    out = [sh.eltwise_shape(f"{name}/scores_add", elements=n, eltwise_op="add", n_inputs=2,
                            **common)]
    additive = isinstance(layer, _additive())
    if scaled:  # a d-vector times the tanh (as the .tflite's MUL), or a scalar times the sums
        out.append(sh.eltwise_shape(f"{name}/scale", elements=n, eltwise_op="mul",
                                    n_inputs=2, **common))
    if not additive:
        out.append(sh.eltwise_shape(f"{name}/score_weight", elements=t_q * t_v,
                                    eltwise_op="mul", n_inputs=2, **common))
    return out
