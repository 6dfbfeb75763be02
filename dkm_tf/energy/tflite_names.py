"""The Keras layer a `.tflite` op came from, when its weight and output names do not say.

The converter names tensors after the TensorFlow ops that made them, inside the Keras layer's
name scope (`digits_cnn_1/fc1_1/MatMul`). The reader names a conv or dense record after the
scope of its weight, else of its output. Neither has one when the weight is decoded from a
palette (`dkm/reshape_63`, made by `dkm_tf.export`'s decode chain) and the output is a model
output (renamed `StatefulPartitionedCall:0`): the last Dense of a palettized file was named
`fully_connected_52`. Its bias operand still carries the scope (`digits_cnn_1/fc2_1/BiasAdd`).
A bias is trusted only when no other op reads the same tensor and the `BiasAdd` parts of its
name (a Keras Dense / conv's own bias; a fused name `r/Relu6;b/BiasAdd` has others) are in
one scope, whose part is returned: a
constant the converter shares between layers (two all-zero biases of one size) may carry
another layer's name, and a bias-free Dense followed by a layer adding a constant
(`x + self.s`) gets that layer's `add` folded in as its bias (it was named after it).
"""


def bias_name(view, users, k, at, scope):
    """The `BiasAdd` part of the name of operand `at` (the bias) of op `k` if only op `k` reads
    it and its `BiasAdd` parts are in one name scope (`scope(name)` gives it, or None), else
    ""."""
    ins = view.ops[k].InputsAsNumpy()
    if len(ins) <= at or ins[at] < 0 or users.get(int(ins[at]), []) != [k]:
        return ""
    name = view.name(ins[at])
    own = [part for part in name.split(";") if part.rsplit("/", 1)[-1].startswith("BiasAdd")]
    scopes = {scope(part) for part in own}
    return own[0] if len(scopes) == 1 and None not in scopes else ""
