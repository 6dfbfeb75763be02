"""Keras 3 quantized (`model.quantize("int8")`) and LoRA (`layer.enable_lora(r)`) layers.

A quantized Dense / EinsumDense keeps its kernel as int8 (int4 packed two per byte, or a
float8 kernel with scales) beside the float bias; its MACs and weight count are those of the
float layer (the readers take them from the layer's input and output shapes, or, traced, from
the matrix product's operands: `graph_reader` reads the int8 `BatchMatMulV3`, and the product
of a float8 / int4 layer's computed kernel, as the layer's product; the quantize / dequantize
arithmetic the layer's `quantized_call` adds is listed, not charged, `traced_activations`
recording which ops that call made). Before, a traced int8 / float8 Dense was dropped
(3,888 of 6,224 MACs) and an int4 one read as zero-MAC records. As for an int8 `.tflite`
(`stored.quantized_note`), every weight is charged at the
B_w asked for, and a note says which layers store integer weights (:func:`quantized_layers`).

A LoRA-enabled layer computes its kernel as ``kernel + A·B · (alpha / r)`` on every call
(its effective kernel has the layer's kernel shape). The Functional reader charges the
layer's product with that effective kernel (as a deployed, merged model runs it); the traced
reader did not: it read the LoRA matrices' products as the layer (a Dense of 144 -> 16 read
as 4,608 MACs with 32 weights plus zero-MAC records; a conv as 216 MACs), so
`traced_wrappers` traces LoRA layers (`dkm_tf.graph.layer_features.lora_layers`) with LoRA
off (the same effective kernel shape).
"""


def quantized_layers(model):
    """`{layer name: (mode, "float32")}` of the layers of `model` (every depth) that Keras
    quantized (`dkm_tf.graph.quantized.quantized_layers`), as `stored.quantized_note` reads
    them."""
    from dkm_tf.graph.quantized import quantized_layers as found

    return {name: (str(mode), "float32") for name, mode, _ in found(model)}
