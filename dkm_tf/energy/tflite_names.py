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


_LAYER_OPS = ("BiasAdd", "convolution", "MatMul", "separable_conv2d", "depthwise",
              "conv_transpose", "conv2d_transpose", "Einsum")


def scope(tensor_name, nested=None):
    """The Keras layer scope of `tensor_name`'s first `;` part (`model/layer/op` -> `layer`),
    or None (no scope: `dkm/reshape_6`, `arith.constant3`); inside a nested model's scope the
    name `nested` (`tflite_nested.NestedScopes`) gives its layer (`model/base_1/c1_1/op`)."""
    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    if len(parts) < 3:
        return None
    return parts[1] if nested is None else nested.name(parts)


def layer_scope(tensor_name, nested=None):
    """The scope of the parts of a fused tensor name that are a conv / dense layer's own op
    (`depthwise`, `convolution`, `MatMul`, `BiasAdd`, ...) when they lie in one scope, else
    `scope(tensor_name)`. The converter names a conv's fused output and its BN-folded weight
    after every op it fused, the last first: MobileNetV2's depthwise convs were named after
    their ReLU (`m/expanded_conv_depthwise_relu_1/Relu6;m/expanded_conv_depthwise_BN_1/
    batchnorm/mul_1;m/expanded_conv_depthwise_1/depthwise` -> `expanded_conv_depthwise_relu_1`,
    17 of 53 conv records of the float and palettized files), not the Keras estimate's
    `expanded_conv_depthwise`, so `estimate(file, palettes=...)` refused their palettes."""
    scopes = {scope(part, nested) for part in tensor_name.split(";")
              if part.rsplit("/", 1)[-1].startswith(_LAYER_OPS)} - {None}
    return scopes.pop() if len(scopes) == 1 else scope(tensor_name, nested)


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


_FOLLOW = ("ADD", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS")
_OWN_OPS = ("BiasAdd", "convolution", "MatMul", "separable_conv2d")


def own_name(view, users, k, at, scope, weights=()):
    """`bias_name` of op `k`'s operand `at`, else the name its output chain carries.

    A conv that `dkm_tf.export` lowers to BATCH_MATMUL (no bias operand) computes
    `RESHAPE(ADD(BATCH_MATMUL(im2col, W), bias))` (a TRANSPOSE between for a weight on the
    left), and the conv's bias constant and the RESHAPE's output keep the names the converter
    gave the conv's bias and output (`model/conv2d_4_1/BiasAdd;model/conv2d_4_1/convolution;
    ...`): 11 of fer's 23 palettized layers were named `batch_matmul_<index>` for want of
    them. The chain is followed from op `k`'s output while each tensor has one reader: an ADD
    of a constant (or decoded) operand (its name read only if that ADD alone reads it: zero
    biases may be one shared constant, `arith.constant1`), or a layout op. The name is the
    scope of the parts of those names that are a conv / dense layer's own op (`BiasAdd`,
    `convolution`, `MatMul`, `separable_conv2d`), returned only when they all lie in one
    scope: a fused activation's part (`activation_5_1/Relu`) is not one, two scopes
    (another layer's op fused in) give no name (`<op>_<index>` stays), and an unscoped part
    names no rival (a grouped conv's bare `convolution` in `m/gdw_1/BiasAdd;convolution`: its
    BATCH_MATMUL was `batch_matmul_<index>`; with a zero bias, shared, it still is)."""
    found = bias_name(view, users, k, at, scope)
    if found:
        return found
    t, names = int(view.ops[k].OutputsAsNumpy()[0]), []
    for _ in range(8):
        readers = users.get(t, [])
        if len(readers) != 1 or view.names[readers[0]] not in _FOLLOW:
            break
        j = readers[0]
        ins = [int(i) for i in view.inputs(j)]
        if view.names[j] == "ADD":
            other = [i for i in ins if i != t]
            if len(ins) != 2 or len(other) != 1 or not (view.const(other[0]) or
                                                        other[0] in weights):
                break
            if users.get(other[0], []) == [j]:  # a bias the converter shares: not its name
                names.append(view.name(other[0]))
        elif not ins or ins[0] != t:
            break
        t = int(view.ops[j].OutputsAsNumpy()[0])
        names.append(view.name(t))
    own = [part for name in names for part in name.split(";")
           if part.rsplit("/", 1)[-1].startswith(_OWN_OPS) and scope(part)]
    scopes = {scope(part) for part in own}
    return own[0] if len(scopes) == 1 else ""
