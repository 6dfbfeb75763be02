"""Reads `LayerShape` records from a `.tflite` flatbuffer (no interpreter needed).

Operators of subgraph 0 are read with the flatbuffer schema bundled with TensorFlow
(`tensorflow.lite.python.schema_py_generated`, imported lazily). A WHILE operator (a Keras
recurrent layer's time loop) is read through its body subgraph, each record multiplied by the
trip count when the loop's bounds are constants (counter `i` from a constant start, `i += step`
in the body, `i < limit` or `i <= limit` in the condition); otherwise the body is counted once
and the loop is reported as skipped with the reason. Supported: CONV_2D (grouped when the
filter has fewer input channels than the input), DEPTHWISE_CONV_2D, TRANSPOSE_CONV
(`conv_transpose`), FULLY_CONNECTED and BATCH_MATMUL with a 2-D right-hand side (rows per image
from any input layout, `tflite_rows`), other BATCH_MATMULs (attention: `tflite_matmul`), IF
(the costlier branch, `tflite_control`), MAX_POOL_2D, AVERAGE_POOL_2D, MEAN / SUM / REDUCE_MAX
(global pooling; bias ADDs, integer ops, lookups and other reductions are listed, not charged:
`tflite_ops`), the element-wise ADD, SUB, MUL, MAXIMUM, MINIMUM, RELU, RELU6, LEAKY_RELU, and
PRELU (one "affine" record, `shapes.prelu_shape`). A LEAKY_RELU in the name scope of the op it
reads (`Conv2D(activation="leaky_relu")`, which TFLite cannot fuse) is reported as a fused
activation, not charged, as the other readers do; so is a RELU / RELU6 after a dilated conv's
BATCH_TO_SPACE_ND in the conv's scope (`tflite_blocks.after_blocks`). Layout ops (RESHAPE, PAD,
SPACE_TO_BATCH_ND, ...) and weight-decoding ops (DEQUANTIZE, GATHER, ...) are reported as "no
compute"; anything else is reported as unsupported. The one-hot DEPTHWISE_CONV_2D that builds
the im2col of a conv `dkm_tf.export` lowered to BATCH_MATMUL (`tflite_palettes.im2col_helper`)
copies pixels: reported, not charged (the BATCH_MATMUL is the conv's MACs).

Palettized weights (`dkm_tf.export`'s codebook + indices decode chains) are recognised by
`tflite_palettes`: :func:`read_tflite_palettes` also returns K, d and G of every conv or dense
op whose weight is decoded from a palette, and ops computing only from constants (the decode
chains) are reported once per subgraph as weight decoding, not charged as layers.

Records are named after the Keras layer when the converter kept its name scope (the weight
tensor's name, else the output's, else a conv / dense bias's, `tflite_names`:
`functional_1/c1_1/convolution` → `c1_1`, of a conv's fused `dw_relu_1/Relu6;dw_1/depthwise`
the conv's `dw_1`; Keras 3 export may append `_1`, which compression-info lookup tolerates),
else `<op>_<index>`. Duplicates get a `#n` suffix. Shapes are per image (batch axis ignored;
an element-wise op's elements over the file's batch, wherever it stands: a `TimeDistributed`
layer's ops after its PACK run time-major, `tflite_rows.elements_per_image`;
dims left open beyond the batch read by running the file once, `tflite_dynamic`; the rows of
a matrix product divided by the input's batch, `tflite_rows`); a conv runs the images
of its stored batch per image of the file, and a dilated conv lowered to SPACE_TO_BATCH_ND ->
conv -> BATCH_TO_SPACE_ND the positions of the Keras conv, not the ones its crops
drop (`tflite_blocks`).
"""

import math
import os

_NO_COMPUTE = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "PAD", "PADV2", "CONCATENATION",
               "TRANSPOSE", "QUANTIZE", "DEQUANTIZE", "CAST", "GATHER", "SLICE", "STRIDED_SLICE",
               "TILE", "SHAPE", "PACK", "UNPACK", "SPLIT", "SPLIT_V", "SPACE_TO_BATCH_ND",
               "BATCH_TO_SPACE_ND", "REVERSE_V2")
_ELTWISE = {"ADD": "add", "SUB": "add", "MUL": "mul", "MAXIMUM": "max", "MINIMUM": "max",
            "RELU": "relu", "RELU6": "relu", "LEAKY_RELU": "relu", "RELU_N1_TO_1": "relu"}


def read_tflite(path):
    """Reads per-op shapes of a `.tflite` file.

    Args:
        path: Path to a `.tflite` flatbuffer.

    Returns:
        `(shapes, skipped)`: a tuple of `LayerShape` and a tuple of `(name, reason)`.

    Raises:
        ValueError: If the file is not a readable TFLite flatbuffer.
    """
    shapes, skipped, _ = read_tflite_palettes(path)
    return shapes, skipped


def read_tflite_palettes(path, quantized=None, input_shape=None):
    """Like `read_tflite`, plus the palettes the file stores.

    Open dimensions beyond the batch are read by running the file once (`tflite_dynamic`), at
    `input_shape` (without the batch axis) where given: an input left open needs it.

    `quantized`, a dict if given, receives `{record name: (weight type, input type)}` for each
    conv / dense op whose weight is stored as an integer type ("int8", "uint8", "int16",
    "int4"); the input type is "float32" unless the activations are integers too.

    Returns:
        `(shapes, skipped, palettes)`: `palettes` maps the name of each conv / dense record
        whose weight is decoded from a codebook + indices to its
        `tflite_palettes.StoredPalette` (K, d, G, decode mode).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    from dkm_tf.energy import tflite_control as tc
    from dkm_tf.energy.tflite_rows import images_per_invoke

    with open(os.fspath(path), "rb") as fh:
        buf = fh.read()
    try:
        if not schema.Model.ModelBufferHasIdentifier(buf, 0):
            raise ValueError("missing the 'TFL3' file identifier")
        model = schema.Model.GetRootAs(buf, 0)
        graph = model.Subgraphs(0)
    except Exception as e:
        raise ValueError(f"{os.fspath(path)!r} is not a readable TFLite model: {e}") from e
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    shapes, skipped, used, palettes = [], [], {}, {}
    try:
        from dkm_tf.energy.tflite_variables import check_assigned

        check_assigned(model, op_names, os.fspath(path))  # weights not stored: refused
        from dkm_tf.energy.tflite_dynamic import run_shapes

        run, skipped[:0] = run_shapes(path, model, op_names, input_shape)
        _read_graph(model, schema, op_names, graph, 1, "", shapes, skipped, used, (0,),
                    palettes, None, quantized, images_per_invoke(graph), run)
        skipped += tc.unreached(model, schema, op_names)
    except Exception as e:  # struct.error, IndexError, flatbuffers' ValueError: a damaged file
        from dkm_tf.core.model_damage import raised_here  # noqa: PLC0415
        if isinstance(e, ValueError) and raised_here(e):
            raise  # a refusal of the reader's own (InputShapeError, an op it cannot read)
        raise ValueError(f"{os.fspath(path)!r} is not a readable TFLite model (truncated or "
                         f"corrupted, {len(buf):,} bytes): {type(e).__name__}: {e}") from e
    return tuple(shapes), tuple(skipped), palettes


def _read_graph(model, schema, op_names, graph, trips, prefix, shapes, skipped, used, stack,
                palettes, outer, quantized=None, batch=1, run=None):
    """Appends the records of one subgraph's ops, each repeated `trips` times.

    `palettes` collects `{record name: StoredPalette}`; `outer` maps this subgraph's input
    tensors that carry a weight decoded in the calling graph to its palette; `batch`: the
    images per invoke (`tflite_rows.images_per_invoke`), by which the rows of a matrix
    product are divided; `run`:
    `{subgraph: {tensor: shape}}` read by running the file (`tflite_dynamic`), if any.
    """
    from collections import Counter

    from dkm_tf.energy import shapes as sh
    from dkm_tf.energy import tflite_blocks as tb
    from dkm_tf.energy import tflite_control as tc
    from dkm_tf.energy import tflite_ops as tops
    from dkm_tf.energy import tflite_palettes as tp
    from dkm_tf.energy.tflite_names import bias_name, own_name
    from dkm_tf.energy.tflite_nested import nested_scopes
    from dkm_tf.energy.tflite_rows import elements_per_image, rows_per_image, stored_count

    view = tp.GraphView(model, graph, op_names, (run or {}).get(stack[-1]))
    scope, layer_scope = nested_scopes(view)  # a nested model's layer: its own name
    decode = set(tp.constant_ops(view))
    weights = {int(t) for j in decode for t in view.ops[j].OutputsAsNumpy()} | set(outer or ())
    users = {}
    for j in range(len(view.ops)):
        for t in view.inputs(j):
            users.setdefault(t, []).append(j)
    decode_ops = Counter()

    ints = {getattr(schema.TensorType, t.upper()): t for t in ("int8", "uint8", "int16", "int4")}

    def palette(name, op, x_at=0, w_at=1):
        found = tp.stored_palette(view, op.InputsAsNumpy()[w_at], outer)
        if found is not None:
            palettes[name] = found
        x, w = (graph.Tensors(int(op.InputsAsNumpy()[i])).Type() for i in (x_at, w_at))
        if quantized is not None and w in ints:
            quantized[name] = (ints[w], ints.get(x, "float32"))

    def tensor(i):
        return view.name(i), tuple(max(d, 1) for d in view.shape(i))

    def options(op, cls):
        table = op.BuiltinOptions()
        obj = cls()
        if table is not None:
            obj.Init(table.Bytes, table.Pos)
        return obj

    def name_of(candidates, fallback, pick=scope):  # pick=layer_scope: a conv / dense op
        name = next((n for n in map(pick, candidates) if n is not None), fallback)
        used[name] = used.get(name, 0) + 1
        return name if used[name] == 1 else f"{name}#{used[name]}"

    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        opname = view.names[k]
        ins = [tensor(i) if i >= 0 else ("", ()) for i in op.InputsAsNumpy()]
        out_name, y = tensor(op.OutputsAsNumpy()[0]) if op.OutputsLength() else ("", ())
        label = f"{prefix}{opname.lower()}_{k}"
        if k in decode:
            decode_ops[opname] += 1
            continue
        try:
            if opname == "WHILE":
                opts = options(op, schema.WhileOptions)
                body = opts.BodySubgraphIndex()
                if body in stack:
                    raise ValueError(f"WHILE body subgraph {body} calls itself")
                n = tc.trip_count(model, schema, op_names, graph, op)
                if n is None:
                    skipped.append((label, "WHILE: trip count not constant, body counted once"))
                skipped.append(tc.cond_entry(model, schema, op_names, op, label, n))
                body_graph = model.Subgraphs(body)
                carried = {}
                for t_in, t_body in zip(op.InputsAsNumpy(), body_graph.InputsAsNumpy()):
                    found = tp.stored_palette(view, t_in, outer) if t_in >= 0 else None
                    if found is not None:
                        carried[int(t_body)] = found
                _read_graph(model, schema, op_names, body_graph,
                            trips * (1 if n is None else n), f"{label}/", shapes, skipped,
                            used, (*stack, body), palettes, carried, quantized, batch, run)
            elif opname == "IF":
                def read(s, label=label):
                    if s in stack:
                        raise ValueError(f"IF branch subgraph {s} calls itself")
                    out = [], [], {}, dict(used)
                    _read_graph(model, schema, op_names, model.Subgraphs(s), trips, f"{label}/",
                                out[0], out[1], out[3], (*stack, s), out[2], None, quantized,
                                batch, run)
                    return out

                recs, skip, pal, names = tc.read_if(model, schema, op_names, op, label, read)
                shapes += recs
                skipped += skip
                palettes.update(pal)
                used.update(names)
            elif opname == "CONV_2D":
                x, w = ins[0][1], ins[1][1]
                opt = options(op, schema.Conv2DOptions)
                name = name_of([ins[1][0], out_name, bias_name(view, users, k, 2, scope)],
                               label, layer_scope)
                strides = (opt.StrideH(), opt.StrideW())
                in_hw, out_hw, images = tb.conv_geometry(view, users, k, x, y, batch, strides)
                shapes.append(sh.conv_shape(name, layer=name.split("#")[0], op=opname,
                                            in_hw=in_hw, in_c=x[3], out_hw=out_hw, out_c=w[0],
                                            kernel=w[1:3], groups=x[3] // w[3],
                                            repeat=trips * images, strides=strides))
                palette(name, op)
            elif opname == "DEPTHWISE_CONV_2D" and tp.im2col_helper(view, k):
                skipped.append((label, f"im2col of a conv lowered to BATCH_MATMUL (one-hot "
                                f"filter {ins[1][0]!r}): copies input pixels, no compute, "
                                "not charged"))
            elif opname == "DEPTHWISE_CONV_2D":
                x, w = ins[0][1], ins[1][1]
                opt = options(op, schema.DepthwiseConv2DOptions)
                name = name_of([ins[1][0], out_name, bias_name(view, users, k, 2, scope)],
                               label, layer_scope)
                strides = (opt.StrideH(), opt.StrideW())
                in_hw, out_hw, images = tb.conv_geometry(view, users, k, x, y, batch, strides)
                shapes.append(sh.conv_shape(name, layer=name.split("#")[0], op=opname,
                                            in_hw=in_hw, in_c=x[3], out_hw=out_hw, out_c=w[3],
                                            kernel=w[1:3], groups=x[3],
                                            repeat=trips * images, strides=strides))
                palette(name, op)
            elif opname == "FULLY_CONNECTED" or (opname == "BATCH_MATMUL" and
                                                 len(ins[1][1]) == 2):
                a, b = (int(i) for i in op.InputsAsNumpy()[:2])
                # dkm_tf.export puts a decoded weight on the left when it has more columns
                # than the activations have rows: W [units, in_f] . X^T (adj_y)
                w_at = 0 if opname == "BATCH_MATMUL" and len(ins[0][1]) == 2 and (
                    a in weights or view.const(a)) and not (b in weights or view.const(b)) \
                    else 1
                x, w = ins[1 - w_at][1], ins[w_at][1]
                if opname == "FULLY_CONNECTED":
                    in_f, units = w[1], w[0]
                elif w_at == 0:
                    adj_x = options(op, schema.BatchMatMulOptions).AdjX()
                    units, in_f = (w[1], w[0]) if adj_x else w
                else:
                    adj_y = options(op, schema.BatchMatMulOptions).AdjY()
                    in_f, units = (w[1], w[0]) if adj_y else w
                name = name_of([ins[w_at][0], out_name, own_name(view, users, k, 2, scope,
                                                                  weights)], label, layer_scope)
                x_t = int(op.InputsAsNumpy()[1 - w_at])
                rows = rows_per_image([stored_count(view, users, t) for t in (
                    op.InputsAsNumpy()[1 - w_at], op.OutputsAsNumpy()[0])],
                    in_f, units, batch, label, skipped)
                shapes.append(sh.dense_shape(name, layer=name.split("#")[0], op=opname,
                                             in_features=in_f, units=units,
                                             positions=tb.kept_positions(
                                                 view, users, k, x_t, trips * rows *
                                                 tb.missing_blocks(view, x_t))))
                palette(name, op, x_at=1 - w_at, w_at=w_at)
            elif opname == "BATCH_MATMUL":  # two activations (attention), or an N-D weight
                from dkm_tf.energy.tflite_matmul import batch_matmul_shape

                opt = options(op, schema.BatchMatMulOptions)
                # a grouped conv lowered by dkm_tf.export: named by its output chain
                name = name_of([out_name, own_name(view, users, k, 2, scope, weights)], label,
                               layer_scope)
                shapes.append(batch_matmul_shape(name, a=ins[0][1], b=ins[1][1], out=y,
                                                 adj_x=opt.AdjX(), adj_y=opt.AdjY(),
                                                 batch=batch, repeat=trips, label=label,
                                                 skipped=skipped))
                if int(op.InputsAsNumpy()[1]) in weights or view.const(op.InputsAsNumpy()[1]):
                    palette(name, op)
            elif opname == "TRANSPOSE_CONV":  # see `conv_transpose` for the MACs
                from dkm_tf.energy.conv_transpose import conv_transpose_shape

                w, x = ins[1][1], ins[2][1]  # filter [out_c, kh, kw, in_c / groups], input
                name = name_of([ins[1][0], out_name, bias_name(view, users, k, 3, scope)],
                               label, layer_scope)
                shapes.append(conv_transpose_shape(name, layer=name.split("#")[0], op=opname,
                                                   in_hw=x[1:3], in_c=x[3], out_c=w[0],
                                                   kernel=w[1:3], groups=x[3] // w[3],
                                                   repeat=trips))
                palette(name, op, x_at=2)
            elif opname in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                x = ins[0][1]
                opt = options(op, schema.Pool2DOptions)
                name = name_of([out_name], label)
                shapes.append(sh.pool_shape(name, layer=name.split("#")[0], op=opname,
                                            in_hw=x[1:3], channels=x[3], out_hw=y[1:3],
                                            window=(opt.FilterHeight(), opt.FilterWidth()),
                                            strides=(opt.StrideH(), opt.StrideW()),
                                            pool_op=("max" if opname == "MAX_POOL_2D"
                                                     else "avg"), repeat=trips))
            elif opname in tops.REDUCTIONS and not tops.integer_only(view, k):
                record, why = tops.reduce_shape(view, k, ins[0][1], trips,
                                                lambda o=out_name, b=label: name_of([o], b))
                shapes += [record] if record else []
                skipped += [(label, why)] if why else []
            elif opname == "PRELU":
                name = name_of([ins[1][0], out_name], label)
                shapes.append(sh.prelu_shape(name, layer=name.split("#")[0], op=opname,
                                             elements=trips * elements_per_image(y, batch),
                                             n_params=math.prod(ins[1][1]) or 1))
            elif (opname == "LEAKY_RELU" or tb.after_blocks(view, k)) and \
                    scope(out_name) is not None and scope(ins[0][0]) == scope(out_name):
                # Conv2D(activation="leaky_relu"), a dilated conv's relu: not fused in TFLite,
                # but the layer's own activation, charged as fused like the other readers
                skipped.append((label, f"activation of layer {scope(out_name)}, fused"))
            elif opname in _ELTWISE and view.dtype(op.OutputsAsNumpy()[0]) in (2, 4) and \
                    math.prod(y) <= 1:  # int32 / int64 scalar: a loop counter, an index
                skipped.append((label, f"integer scalar {opname} (loop counter or index "
                                "arithmetic), not charged"))
            elif opname not in _NO_COMPUTE and tops.integer_only(view, k):
                skipped.append((label, f"{opname} of integers (index or shape arithmetic), "
                                "not charged"))
            elif product := tops.bias_of(view, k, weights):
                skipped.append((label, f"bias of the {product} before "
                                "it (its accumulators' initial value), not charged"))
            elif opname in tops.LISTED:
                skipped.append((label, f"{opname}: {tops.LISTED[opname]}"))
            elif opname in _ELTWISE:
                n_in = 1 if _ELTWISE[opname] == "relu" else 2
                name = name_of([out_name], label)
                shapes.append(sh.eltwise_shape(name, layer=name.split("#")[0], op=opname,
                                               elements=trips * elements_per_image(y, batch),
                                               eltwise_op=_ELTWISE[opname], n_inputs=n_in))
            elif opname in _NO_COMPUTE:
                skipped.append((label, tops.no_compute_reason(view, k, weights, outer, scope)))
            else:
                skipped.append((label, f"unsupported TFLite op {opname}"))
        except (IndexError, ValueError, ZeroDivisionError) as e:
            raise ValueError(
                f"Could not read TFLite op {k} ({opname}, output {out_name!r}) with input "
                f"shapes {[s for _, s in ins]} and output shape {y}: {e}"
            ) from e
    if decode_ops:
        ops = ", ".join(f"{n} x{c}" for n, c in sorted(decode_ops.items()))
        skipped.append((f"{prefix}weight decode", f"{sum(decode_ops.values())} ops computing "
                        f"from constants only (weight decoding), not charged: {ops}"))
