"""A rank-2 `Dense` read by a ReLU and by other ops: the file's extra FULLY_CONNECTED.

The TensorFlow Lite converter (TF 2.21) fuses a RELU / RELU6 into a FULLY_CONNECTED even
where that op has other readers: it writes a FULLY_CONNECTED of its own with the activation
fused for each kind of ReLU reading it (ReLU, ReLU6; a ReLU capped at other than 6 starts
with a RELU: `relu_fusion.leading_relu`) and keeps the plain one only where another op (or
a model output) reads it. Before 2026-12-07 the Keras reader charged the Dense once and a
RELU for each ReLU: `Dense(8)` on `tanh(Input(16))` read by a ReLU and a sigmoid, Keras /
file hierarchy 0.5842 (by a model output 0.5519, by a Dense 0.5980); by a ReLU and a ReLU6
only, 0.6323. A conv, a batch norm, a Dense on a rank-3 tensor (a RESHAPE first) are computed
once and keep a RELU op (`tests/test_csefix28.py`). The readers are `keras_cse`'s, merged
across twins as the converter merges them. Until later on 2026-12-07 only ReLU layers reading
the Dense directly were copies: `keras.ops.relu` / `relu6` / `clip(y, 0, 6)`, a ReLU behind
a same-shape reshape or a `Dropout` read twice, in a `Lambda` or beside a nested model
passing the Dense through, and a Dense ending a `keras.layers.Pipeline` gave 0.5842
(`Pipeline([Dense(8)])` read by a ReLU and a ReLU6 only: no FULLY_CONNECTED, 0.1684); a ReLU
layer beside `ops.relu`, `Pipeline([ReLU()])` or `Lambda(ops.relu)` (one FULLY_CONNECTED in
the file) 1.9551 / 1.8654 / 1.9551 (`tests/test_denseops29.py`). Until later still
(`tests/test_densebn30.py`), a batch norm between the Dense and its readers was folded into
one FULLY_CONNECTED (0.5842), one beside ReLU copies charged (1.1445), twins read by a ReLU
and a sigmoid and by that ReLU merged into three FULLY_CONNECTED (1.4327), and a ReLU
behind shape-only ops charged as a RELU (`Reshape((2, 4))`: 0.5519, the file's dead
FULLY_CONNECTED; `ops.expand_dims` then `ops.squeeze`: 1.1037). A ReLU with a slope and a
cap reads the Dense twice itself, its NEG the plain FULLY_CONNECTED, the RELU of its input a
copy (`copied_kind`; 0.6649 before 2026-12-07, `tests/test_relufuse31b.py`).
"""

import dataclasses

from dkm_tf.energy.activations import activation_name
from dkm_tf.energy.bn_folding import removed
from dkm_tf.energy.keras_calls import node_inputs
from dkm_tf.energy.keras_consts import fold_of
from dkm_tf.energy.keras_cse import STATE
from dkm_tf.energy.keras_pipeline import pipeline_calls, same_shape_reshape
from dkm_tf.energy.relu_fusion import _in_lambda, identity_reshape, lambda_reader, relu_kind
from dkm_tf.energy.relu_like import activation_relu


def dense_copy(layer, call, counts, keras, used, outer=None):
    """`(dense, its call, first, (counts, outer) of its graph)` where the leading RELU of
    `layer` (a ReLU layer, `keras.ops.relu` / `relu6` / `clip(x, 0, 6)`: `relu_kind`) at
    `call` reads, past removed identities, same-shape reshapes (`identity_reshape`) and
    through a `Lambda`'s traced function (`relu_fusion._in_lambda`), the
    output of a linear `Dense` on a rank-2 tensor (also the last layer of a
    `keras.layers.Pipeline`: `_pipeline_dense`) that other calls read too (`counts`,
    `keras_cse.left_out`'s, anywhere on the way), else None; `first`: no ReLU of its kind on
    that output was charged yet (`used`: the reader's name counts, in whose `keras_cse` state
    this is noted), so this one is charged as that FULLY_CONNECTED (else it is fused in).
    `outer`: as for `bn_folding.source`, where the call is in a nested model (an input of
    it is followed out to the tensor its call passes), and a nested model's output into that
    model (the counts of its walk, `keras_cse.left_out`'s)."""
    kind = copied_kind(layer, keras)
    if isinstance(call, Exception) or not call[0] or kind is None:
        return None  # many: read by others on the way (a sloped ReLU's NEG: `copied_kind`)
    x, many, shaped = call[0][0], kind != relu_kind(layer, keras), []
    while True:
        many = many or counts.get(id(x), 0) >= 2
        try:
            producer, node, index = x._keras_history
            ins = producer._inbound_nodes[node].input_tensors
            if isinstance(producer, keras.Model) and ("nested", id(x)) in counts:
                inside = (keras.tree.flatten(producer.inputs), node_inputs(
                    producer, producer._inbound_nodes[node]), counts, outer)
                x, counts, outer = (keras.tree.flatten(producer.outputs)[index],
                                    counts[("nested", id(x))], inside)
                continue  # into it, with its walk's counts
        except (AttributeError, ValueError, TypeError, IndexError):
            return None
        if (inside := _in_lambda((producer, ins, counts, outer), keras)) is not None:
            x, counts, outer = inside  # its traced function: `Lambda(lambda t: t * 2.0)`
            continue  # between the Dense and a sloped ReLU, 0.6649 before 2026-12-07
        at = [k for k, o in enumerate(outer[0]) if o is x] if outer is not None and type(
            producer).__name__ == "InputLayer" else []
        if len(at) == 1 and at[0] < len(outer[1]):
            x, counts, outer = outer[1][at[0]], outer[2], outer[3]  # out of a nested model
            continue
        if len(ins) == 1 and type(producer).__name__ in _SHAPE_OPS and not identity_reshape(
                producer, ins, keras):  # moved after the RELU (`_reshaped`)
            shaped.append(None if counts.get(id(x), 0) >= 2 else isinstance(
                producer, keras.layers.Layer))  # None: its output read twice, not moved
        elif not (len(ins) == 1 and (removed(producer, keras) or identity_reshape(
                producer, ins, keras) or fold_of(producer, (ins, [x]), counts, keras,
                                                 outer) is not None)):
            break  # a batch norm folded into the Dense: into each copy (0.5842 before)
        x = ins[0]
    if isinstance(producer, keras.layers.Pipeline):
        producer, ins = _pipeline_dense(producer, producer._inbound_nodes[node], keras)
    if shaped and (not many or not _reshaped(layer, producer, ins, x, shaped, False, (
            counts, outer), keras)):  # read by others too: a copy, as without them
        return _reshaped(layer, producer, ins, x, shaped, many, (counts, outer), keras)
    if not _linear_rank2(producer, ins, keras) or not many:
        return None
    state = used.get(STATE)  # per walk: a TimeDistributed model's steps are walked apart
    charged = set() if state is None else state.setdefault("dense_copies", set())
    here = counts.setdefault(_MARKS, set())  # also seen from a `Lambda`'s walk (its own
    key = _key(x, counts, used)  # `used`): a ReLU and a
    mark = (key or object(), kind)  # `Lambda(ops.relu)` on one Dense, 3 FULLY_CONNECTED,
    at = (key if key is not None else id(x), kind)  # file 1; by key: twin calls too (1.8654)
    first = mark not in charged and at not in here and not _fused_twin(
        key, kind, counts.get(("cse_state",)) or state)
    charged.add(mark)
    here.add(at)
    return producer, _Copy((list(ins), [x])), first, (counts, outer)


_SHAPE_OPS = ("Reshape", "Flatten", "ExpandDims", "Squeeze")  # layers and `keras.ops`


def copied_kind(layer, keras):
    """The kind (`relu_kind`) of the RELU of `layer` the converter fuses into a copy of a
    linear rank-2 `Dense` it reads (`dense_copy`): its leading RELU's, or for a ReLU with a
    slope and a cap and no threshold (a `ReLU` layer, `keras.activations.relu`), "relu6" /
    "relu" for the RELU6 / RELU of its input after the NEG (`keras_lowered.relu_ops`): the
    NEG reads the plain FULLY_CONNECTED, that RELU is fused into a copy (before 2026-12-07
    charged as a RELU without the copy: `ReLU(negative_slope=0.1, max_value=3.0)` on
    `Dense(8)(tanh(Input(16)))`, Keras / file hierarchy 0.6649, paper 0.5627; capped at 6
    0.6289); else None."""
    kind = relu_kind(layer, keras)
    if kind is not None or not (isinstance(layer, keras.layers.ReLU) or activation_relu(
            layer, keras)) or layer.max_value is None:
        return kind
    if float(layer.negative_slope) == 0 or float(layer.threshold) != 0:
        return None
    return "relu6" if float(layer.max_value) == 6 else "relu"


def sloped_copy(layer, prev, call, keras):
    """For a layer of a `keras.layers.Pipeline`: the call of the FULLY_CONNECTED copy (`call`,
    `(inputs, outputs)`, of `prev`, charged) where `layer` is a ReLU with a slope and a cap
    (`copied_kind`) and `prev`, the layer before it that the converter keeps (or the one a
    batch norm between is folded into: 0.6649 before 2026-12-07), a linear `Dense`
    on a rank-2 tensor (`Pipeline([Dense(8), ReLU(negative_slope=0.1, max_value=3.0)])`:
    Keras / file hierarchy 0.6649 before 2026-12-07), else None."""
    if relu_kind(layer, keras) is not None or copied_kind(
            layer, keras) is None or not _linear_rank2(prev, call[0], keras):
        return None
    return _Copy((list(call[0]), list(call[1])))


def fused_records(layer, records, keras):
    """`records` of ReLU `layer` less the one of its RELU fused before it (the first; for a
    ReLU with a slope, the second, `copied_kind`), each after it named as the one before."""
    at = 0 if relu_kind(layer, keras) is not None else 1
    return records[:at] + [dataclasses.replace(r, name=k.name) for r, k in zip(
        records[at + 1:], records[at:])]


def _reshaped(layer, dense, ins, x, shaped, many, graph, keras):
    """As `dense_copy`, for ReLU `layer` reading the output `x` of a linear rank-2 `dense`
    through ops that only change its shape (`shaped`: whether each, from the ReLU back, is
    a layer; None where its output is read twice: the RELU stays, None): the converter
    moves the RELU before them and fuses it into the FULLY_CONNECTED; where they are
    `Reshape` / `Flatten` layers (which read the Dense's shape) it keeps the plain
    FULLY_CONNECTED too, unread (`Dense(8)` -> `Reshape((2, 4))` -> ReLU: two
    FULLY_CONNECTED; `ops.expand_dims`, then `ops.squeeze`: one; Keras / file hierarchy
    0.5519 and 1.1037 before 2026-12-07, when the RELU was charged): `first` is whether that
    dead copy is charged. Such a layer after a `keras.ops` one keeps the RELU
    (`ops.expand_dims` -> `Flatten()` -> ReLU): None. `many`: the Dense's output is read by
    others too (None here; `dense_copy` charges a copy as without the reshapes: 0.5842). A
    ReLU capped at 3: its first RELU fused so, its MINIMUM and RELU after the reshapes
    (0.6033 before)."""
    if many or not _linear_rank2(dense, ins, keras) or relu_kind(layer, keras) not in (
            "relu", "relu6") or len(set(shaped)) != 1 or None in shaped:
        return None
    return dense, _Copy((list(ins), [x])), shaped[0], graph


_FUSED = {"relu": ("relu",), "relu6": ("relu6", "clip0.0"), "relu_n1_to_1": ("clip-1.0",)}


def _fused_twin(key, kind, state):
    """Whether a twin call of the Dense whose output is keyed `key` (`keras_cse`'s) is read
    only by a ReLU of `kind`: keyed apart (`keras_cse._fused`) and charged with the RELU
    fused in, the op the converter merges the copy with (`Dense(8)` called twice, one call
    read by a `Lambda(ops.relu)` and a sigmoid, the other by a ReLU: two FULLY_CONNECTED,
    three charged before 2026-12-07, Keras / file hierarchy 1.4327)."""
    base = None if state is None or key is None else state.get("unfused", {}).get(key)
    return base is not None and any(state.get("intern", {}).get(base + (name,))
                                    for name in _FUSED.get(kind, ()))


def _pipeline_dense(layer, node, keras):
    """`(the last layer Pipeline `layer` keeps, its input tensors)` at its call `node` (the
    converter traces the Pipeline's layers into the graph: `Pipeline([Dense(8)])` read by a
    ReLU and a sigmoid is two FULLY_CONNECTED, Keras / file hierarchy 0.5842 before
    2026-12-07; read by a ReLU and a ReLU6 only, its Dense was charged nothing, 0.1684);
    `(layer, [])` where its chain of shapes cannot be followed."""
    try:
        subs, _ = pipeline_calls(layer, (node.input_tensors, node.outputs))
    except (AttributeError, TypeError, ValueError):
        return layer, []
    kept = [(sub, c[0]) for sub, c in subs if not removed(sub, keras) and not
            same_shape_reshape(sub, c)]  # `Pipeline([Dense(8), Reshape((8,))])`: 0.5842
    while len(kept) > 1 and isinstance(kept[-1][0], keras.layers.BatchNormalization) and \
            _linear_rank2(*kept[-2], keras):  # folded into the Dense: 0.5842 before
        kept.pop()
    return kept[-1] if kept else (layer, [])


_MARKS = ("dense_copies",)  # in the counts of the Dense's graph: the copies charged there


class _Copy(tuple):
    """The call `(inputs, outputs)` of a FULLY_CONNECTED copy: charged (`unread`)."""


def unread(layer, call, counts, keras, used):
    """Why the call `(inputs, outputs)` of `layer`, a linear `Dense` on a rank-2 tensor read
    more than once (also through removed identities, same-shape reshapes, nested models), is
    not in the file (every reader is a ReLU / ReLU6, each with a FULLY_CONNECTED of its own:
    `dense_copy`), else None."""
    if isinstance(call, (Exception, _Copy)) or len(call[0]) != 1 or len(call[1]) != 1:
        return None
    if not _linear_rank2(layer, call[0], keras):
        return _folded_beside(layer, call, counts, keras, used)
    key, twins = _key(call[1][0], counts, used), (used.get(STATE) or {}).get("twin_ops", {})
    ops = _readers(key, twins, keras) if key is not None else []
    bn = [k for k, op in (twins.get(key) or {}).items() if isinstance(
        op, keras.layers.BatchNormalization)] if len(ops) == 1 else []
    if bn and not removed(ops[0], keras):  # read by a batch norm folded into it and into
        ops = _readers(bn[0][0][0], twins, keras)  # each copy: its readers (1.4639 before)
        ops = ops if len(ops) >= 2 else [None]
    if not ops or any(_kind(op, keras) is None for op in ops) or \
            counts.get(id(call[1][0]), 0) < 2 and len(ops) < 2:  # one: fused into it
        return None
    return ("every reader is a ReLU with a FULLY_CONNECTED of its own (as a .tflite writes "
            "it): not charged")


def _folded_beside(layer, call, counts, keras, used):
    """Why `layer` (a batch norm, a constant MUL / ADD) at `call` is not charged: it reads
    a linear `Dense` on a rank-2 tensor whose other readers are all ReLUs, each fused into
    a FULLY_CONNECTED copy (`dense_copy`), so the converter folds it into the plain one
    (charged before 2026-12-07: Dense(8) read by a ReLU and a batch norm, Keras / file
    hierarchy 1.0723), else None."""
    x = call[0][0]
    try:
        producer, node, _ = x._keras_history
        ins = producer._inbound_nodes[node].input_tensors
    except (AttributeError, ValueError, TypeError, IndexError):
        return None
    key = _key(x, counts, used)
    if key is None or not (_linear_rank2(producer, ins, keras) or _after_dense(
            producer, (ins, [x]), counts, keras)):
        return None
    twins = (used.get(STATE) or {}).get("twin_ops", {})
    ops, own = _readers(key, twins, keras), _key(call[1][0], counts, used)
    mine = {id(op) for k, op in (twins.get(key) or {}).items() if own is not None and
            isinstance(k, tuple) and k[0] and k[0][0] == own}  # its twins: one op (CSE)
    others = [op for op in ops if op is not layer and id(op) not in mine]
    if len(others) == len(ops) or not others or any(
            _kind(op, keras) is None for op in others):
        return None
    into = fold_of(layer, call, {**counts, id(x): 1}, keras)
    return None if into is None else (
        f"folded into {into} (as a .tflite folds it: its other readers are ReLUs, each "
        "with a FULLY_CONNECTED of its own)")


def _after_dense(op, call, counts, keras):
    """Whether `op` at `call` (a constant MUL / ADD, a batch norm) is folded into a linear
    `Dense` on a rank-2 tensor: an op beside ReLU copies reading its output folds there too
    (`Dense` -> `* 2.0` -> a ReLU and a `* 3.0`: the file folds both MULs into its two
    FULLY_CONNECTED; the `* 3.0` was charged before 2026-12-07, Keras / file hierarchy
    1.0723, paper 1.0300)."""
    from dkm_tf.energy.keras_consts import _fold_layer

    into = _fold_layer(op, (list(call[0]), list(call[1])), counts, keras, None, 0)
    return into is not None and len(call[1][0].shape) == 2 and isinstance(
        into, keras.layers.Dense) and activation_name(getattr(
            into, "activation", None)) == "linear"


def _readers(key, twin_ops, keras, seen=()):
    """The ops reading the tensors of `key` (`keras_cse`'s, merged across twins, through
    removed identities and nested models; None: a model output), through same-shape
    reshapes: read by a ReLU and a ReLU6 only, behind a `Dropout` or such a reshape or in a
    nested model, the file has no plain FULLY_CONNECTED (before 2026-12-07 the Dense and two
    RELU ops were charged: Keras / file hierarchy 0.6323); a `Pipeline` whose first layer
    is noted as its reader is that one reader (counted as two ReLUs, the call of a shared
    Dense read only by `Pipeline([ReLU(), Dense(8)])` was left out: 192 of the file's 320
    MACs, `tests/test_csefix26.py`)."""
    found, ops = [], (twin_ops.get(key) or {}).values()
    for k, op in (twin_ops.get(key) or {}).items():
        if isinstance(op, keras.layers.Pipeline) and op.layers and any(
                o is op.layers[0] for o in ops):
            continue  # its first layer's call is noted too (`pipeline_cse`): one reader
        nodes = getattr(op, "_inbound_nodes", None) or [None]
        if isinstance(k, tuple) and k[0] and key not in seen and all(
                n is not None and identity_reshape(op, n.input_tensors, keras) for n in nodes):
            found.extend(_readers(k[0][0], twin_ops, keras, seen + (key,)) or [None])
        else:
            found.append(op)
    return found


def _linear_rank2(layer, ins, keras):
    return isinstance(layer, keras.layers.Dense) and len(ins) == 1 and \
        len(getattr(ins[0], "shape", ())) == 2 and \
        activation_name(getattr(layer, "activation", None)) == "linear"


def _key(t, counts, used):
    """`keras_cse`'s key of tensor `t` of the graph whose counts are `counts`, or None."""
    env = counts.get(("cse_env",)) or (used.get(STATE) or {}).get("envs", {}).get(
        id(counts), {})  # the first: seen from a `Lambda`'s walk too (its own `used`)
    return env.get(id(t))


def _kind(op, keras):
    """`relu_kind` of `op`, a reader of a Dense's output; of a `Lambda`, the kind of the one
    op reading its input in the graph of each of its calls (`relu_fusion.lambda_reader`: its
    walk charges the copy), else None."""
    return relu_kind(lambda_reader(op, keras), keras)
