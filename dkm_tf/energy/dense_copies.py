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
across twins as the converter merges them.
"""

from dkm_tf.energy.activations import activation_name
from dkm_tf.energy.bn_folding import removed
from dkm_tf.energy.keras_calls import node_inputs
from dkm_tf.energy.keras_cse import STATE
from dkm_tf.energy.relu_fusion import leading_relu


def dense_copy(layer, call, counts, keras, used, outer=None):
    """`(dense, its call, first, (counts, outer) of its graph)` where the leading RELU of
    `layer` at `call` reads, past removed identities each read once, the output of a linear
    `Dense` on a rank-2 tensor that other calls read too (`counts`, `keras_cse.left_out`'s),
    else None; `first`: no ReLU of its kind on that output was charged yet (`used`: the
    reader's name counts, in whose `keras_cse` state this is noted), so this one is charged
    as that FULLY_CONNECTED (else it is fused in). `outer`: as for `bn_folding.source`, where the
    call is in a nested model (an input of it read once there is followed out to the tensor
    its call passes), and a nested model's output into that model (the counts of its walk,
    `keras_cse.left_out`'s)."""
    if isinstance(call, Exception) or not call[0] or not isinstance(
            layer, keras.layers.Layer) or not leading_relu(layer, keras):
        return None
    x, many = call[0][0], False  # many: read by others on the way (a nested model's output)
    while True:
        try:
            producer, node, index = x._keras_history
            ins = producer._inbound_nodes[node].input_tensors
            if isinstance(producer, keras.Model) and ("nested", id(x)) in counts:
                inside = (keras.tree.flatten(producer.inputs), node_inputs(
                    producer, producer._inbound_nodes[node]), counts, outer)
                many = many or counts.get(id(x), 0) >= 2  # into it, with its walk's counts
                x, counts, outer = (keras.tree.flatten(producer.outputs)[index],
                                    counts[("nested", id(x))], inside)
                continue
        except (AttributeError, ValueError, TypeError, IndexError):
            return None
        at = [k for k, o in enumerate(outer[0]) if o is x] if outer is not None and type(
            producer).__name__ == "InputLayer" else []
        if len(at) == 1 and at[0] < len(outer[1]) and counts.get(id(x), 0) == 1:
            x, counts, outer = outer[1][at[0]], outer[2], outer[3]  # out of a nested model
            continue
        if not (len(ins) == 1 and removed(producer, keras) and counts.get(id(x), 0) == 1):
            break
        x = ins[0]
    if not _linear_rank2(producer, ins, keras) or counts.get(id(x), 0) < 2 and not many:
        return None
    state = used.get(STATE)  # per walk: a TimeDistributed model's steps are walked apart
    charged = set() if state is None else state.setdefault("dense_copies", set())
    mark = (_key(x, counts, used) or object(), _kind(layer, keras))
    first = mark not in charged
    charged.add(mark)
    return producer, _Copy((list(ins), [x])), first, (counts, outer)


class _Copy(tuple):
    """The call `(inputs, outputs)` of a FULLY_CONNECTED copy: charged (`unread`)."""


def unread(layer, call, counts, keras, used):
    """Why the call `(inputs, outputs)` of `layer`, a linear `Dense` on a rank-2 tensor read
    more than once, is not in the file (every reader is a ReLU / ReLU6, each with a
    FULLY_CONNECTED of its own: `dense_copy`), else None."""
    if isinstance(call, (Exception, _Copy)) or len(call[0]) != 1 or len(call[1]) != 1 or \
            not _linear_rank2(layer, call[0], keras) or counts.get(id(call[1][0]), 0) < 2:
        return None
    key = _key(call[1][0], counts, used)
    ops = (used.get(STATE) or {}).get("twin_ops", {}).get(key) if key is not None else None
    if not ops or any(_kind(op, keras) is None for op in ops.values()):
        return None
    return ("every reader is a ReLU with a FULLY_CONNECTED of its own (as a .tflite writes "
            "it): not charged")


def _linear_rank2(layer, ins, keras):
    return isinstance(layer, keras.layers.Dense) and len(ins) == 1 and \
        len(getattr(ins[0], "shape", ())) == 2 and \
        activation_name(getattr(layer, "activation", None)) == "linear"


def _key(t, counts, used):
    """`keras_cse`'s key of tensor `t` of the graph whose counts are `counts`, or None."""
    return (used.get(STATE) or {}).get("envs", {}).get(id(counts), {}).get(id(t))


def _kind(op, keras):
    """"relu" / "relu6": the activation the converter fuses for ReLU `op`; None: not one."""
    if not isinstance(op, keras.layers.Layer) or not leading_relu(op, keras):
        return None
    cap = getattr(op, "max_value", None)
    six = cap is not None and float(cap) == 6.0
    return "relu6" if six or activation_name(getattr(op, "activation", None)) == "relu6" \
        else "relu"
