"""TensorFlow Lite Micro LUT compression of clustered weights (optional ``tflite-micro`` extra).

TFLite Micro is the one runtime in the TF family with a lookup-table weight format: a constant
tensor becomes packed ``b``-bit indices (1 <= b <= 7) plus a value table, decoded by the
``TFLM_DECODE`` operator (``tflite_micro.compression``). Files written this way run only in
TFLite Micro; the stock LiteRT interpreter rejects the custom op.

Worked example: a 2 x 3 weight ``[[0.5, -1, 0.5], [0, 0, -1]]`` has the value table
``[-1, 0, 0.5]`` (sorted distinct values) and 2-bit indices ``[2, 0, 2, 1, 1, 0]``.
"""

from __future__ import annotations

import math
import re
import tempfile
import warnings

from dkm_tf.core import std_fds

__all__ = ["MAX_TFLM_BITS", "tflm_available", "tflm_compress", "tflm_interpreter"]

MAX_TFLM_BITS = 7  # the TFLM LUT decoder handles 1..7-bit indices


def tflm_available():
    """True when the ``tflite-micro`` package (``import tflite_micro``) is installed."""
    try:
        import tflite_micro  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _require():
    if not tflm_available():
        raise ImportError("format='tflm' needs the optional TFLite Micro package: "
                          "pip install tflite-micro")


def tflm_interpreter(content, arena_size):
    """A TFLite Micro interpreter of ``content``; a file TFLite Micro cannot run is a
    ``ValueError`` naming the ops it has no kernel for (its C++ names them on stderr only,
    captured here)."""
    from tflite_micro import runtime  # noqa: PLC0415

    from dkm_tf.export.convert import quiet  # noqa: PLC0415

    with tempfile.TemporaryFile("w+b") as log:
        try:
            with quiet(into=log):
                return runtime.Interpreter.from_bytes(bytes(content), arena_size=arena_size)
        except RuntimeError as e:
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            missing = sorted(set(re.findall(r"Didn't find op for builtin opcode '(\w+)'",
                                            text)))
            if not missing:
                lines = [line for line in text.splitlines() if line.strip()][-5:]
                raise RuntimeError(f"{e}; TFLite Micro said: {' | '.join(lines)}") from e
            raise ValueError(
                f"format='tflm': TFLite Micro has no kernel for the op(s) {missing} of this "
                "model (e.g. TILE from UpSampling2D, SELECT from Embedding, CONV_3D from "
                "Conv3D), so it cannot run on a microcontroller; use format='palettized' "
                "(LiteRT) or replace those layers") from e


def _count_once(record, first):
    """A weight stored in a buffer ``first``'s weight reads (the converter stores equal
    constants once: a layer in several loop bodies, layers of equal weights; the compressor
    keeps them one buffer) adds no bytes: ``"copy_of_subgraph"`` (the same palette) or
    ``"shared_with"`` (another palette's record counts them)."""
    if first is record:
        return
    record.update(index_bytes=0, codebook_bytes=0)
    if first["palette"] == record["palette"]:
        record["copy_of_subgraph"] = first.get("subgraph", 0)
        record["route"] += (f"; one more loop body's copy: reads the buffer counted for "
                            f"subgraph {record['copy_of_subgraph']}'s copy")
    else:
        record["shared_with"] = first["palette"]
        record["route"] += f"; stored once: reads the buffer counted in {first['palette']}'s"


def tflm_compress(content, palettes, keras_model=None):
    """LUT-compress the palettized weights of a converted float model for TFLite Micro.

    Args:
        content: ``.tflite`` bytes from the stock converter (float weights holding the
            clustered values).
        palettes: the :class:`~dkm_tf.core.palette.Palette` list; each palette's weight tensor is
            found by value (see :func:`dkm_tf.export.palettize.palettize_flatbuffer`).
        keras_model: the Keras model converted, or None; when given, a refusal of several
            depthwise layers of one class names the class in its ``overrides`` example.

    Returns:
        ``(compressed bytes, records)``; one record per palette with the tensor name, the
        index bit width, table count and sizes. Every tensor gets one value table (TFLite
        Micro's runtime decodes float tensors with a single table): a per-channel palette's
        table holds all its channels' values, so it needs more index bits.

    Raises:
        ImportError: ``tflite-micro`` is not installed.
        ValueError: no palette matches a tensor, or one needs more than 7 index bits.
        Palettes whose values the converter transformed (split, transposed, folded) stay
        float32 with a ``"not_found": True`` record, as in the palettized export (one whose
        values a compressed palette holds, the file keeping no float32 weight of its size,
        is recorded as merged into that palette's op: 0 bytes, ``"shared_with"``, see
        :func:`~dkm_tf.export.record_bytes.merge_not_found`); a weight it multiplied by one
        constant (a ``Rescaling`` before the layer) is compressed, its route saying by what
        (:func:`dkm_tf.export.subgraphs._scaled_matches`).
    """
    _require()
    from tflite_micro import compression  # noqa: PLC0415
    from tflite_micro.tensorflow.lite.micro.compression import spec  # noqa: PLC0415

    from dkm_tf.core.kmeans import count_unique  # noqa: PLC0415
    from dkm_tf.export.palettize import _match  # noqa: PLC0415
    from dkm_tf.export.record_bytes import merge_not_found  # noqa: PLC0415
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415
    from dkm_tf.export.subgraphs import _not_found_record, _scaled_matches  # noqa: PLC0415

    model = FlatModel.from_bytes(content)
    found, left, notes = [], list(palettes), {}
    for g in range(len(model.model.subgraphs)):  # a WHILE body holds recurrent weights
        view = model if g == 0 else model.subgraph(g)
        # every body: a layer in several loops (review R13); unmatched palettes claim a
        # tensor first, so a layer of weights equal to another's is its own (review R15)
        hits = _match(view, [p for p in left] + [p for p in palettes if p not in left])
        # a kernel the converter scaled by one constant (a folded Rescaling): its palette with
        # the codebook scaled alike, as the palettized export does (recorded under its name)
        scaled = _scaled_matches(view, [p for p in palettes if id(p) not in hits], hits)
        hits.update(scaled)
        notes.update({id(hit[0]): hit[0].note.split("; ")[0] for hit in scaled.values()})
        found += [(g, view, *hit) for hit in sorted(hits.values(), key=lambda f: f[1])]
        left = [p for p in left if id(p) not in hits]
    if not found:
        raise ValueError(
            "Palettes do not match the model: no weight tensor of any subgraph holds the "
            f"decoded values of {[p.name for p in left]} (the converter split, transposed or "
            "folded them, e.g. per-gate LSTM kernels), so there is nothing to compress.")
    builder = compression.SpecBuilder()
    records, too_many = [], []
    first = {}  # buffer -> the record that counts its bytes
    for g, fm, p, t, _uses, _tperm, _tshape in found:
        arr = fm.const(t)
        # one table per tensor: TFLite Micro's decoder reads a float tensor's per-channel
        # tables all from the first one (measured: channel c decoded with channel 0's
        # values), so a per-channel palette gets one table of every channel's values
        distinct = count_unique(arr)  # float16 as float32: numpy's float16 sort (core.kmeans)
        bits = max(1, math.ceil(math.log2(distinct))) if distinct > 1 else 1
        if bits > MAX_TFLM_BITS:  # every one named at once, not one per attempt
            too_many.append((p, distinct, bits))
            continue
        builder.add_tensor(g, t).with_lut(index_bitwidth=bits, mode=spec.PerTensor())
        tables = 1
        records.append({"palette": p.name, "tensor": fm.tensor_name(t),
                        "route": "; ".join(["TFLM_DECODE", *([notes[id(p)]] if id(p) in notes
                                                             else [])]),
                        "storage": f"{bits}-bit LUT indices", "K": int(distinct),
                        "tables": tables, "n_weights": int(arr.size),
                        "index_bytes": int(math.ceil(arr.size * bits / 8)),
                        "codebook_bytes": int(tables * (1 << bits) * arr.itemsize),
                        "index_bits": bits, "decode": "tflm", **({"subgraph": g} if g else {})})
        _count_once(records[-1], first.setdefault(int(fm.tensors[t].buffer), records[-1]))
    if too_many:  # in model order (the palettes'), each with its count
        order = {id(q): i for i, q in enumerate(palettes)}
        too_many.sort(key=lambda m: order[id(m[0])])
        (p, distinct, bits), more = too_many[0], too_many[1:]
        others = (f" (so do {len(more)} more: " + ", ".join(
            f"{q.name!r} ({n} values)" for q, n, _ in more) + ")") if more else ""
        raise ValueError(
            f"Invalid palette {p.name!r} for format='tflm': {distinct} distinct values "
            f"need {bits}-bit indices; TFLite Micro supports at most {MAX_TFLM_BITS} bits "
            f"(<= 128 values per tensor){others}"
            f"{_too_many_hint(p, [q for q, _, _ in too_many], keras_model)}.")
    for r in records:
        r["bits_per_weight"] = 8 * (r["index_bytes"] + r["codebook_bytes"]) / r["n_weights"]
    records += [_not_found_record(p, "tflm") for p in left]  # kept as the converter wrote
    merge_not_found(model, records, palettes)  # or in a found palette's op (equal values)
    try:
        with std_fds.catch_warnings(record=True) as caught:  # thread-safe
            warnings.simplefilter("always")
            out = bytes(compression.compress(content, builder.build()))
    except Exception as e:  # noqa: BLE001 - tflite_micro raises CompressionError and others
        raise ValueError(f"TFLite Micro compression failed: {type(e).__name__}: {e}") from e
    for r in records:  # tflite_micro warns when a tensor grows; keep it in the records
        r["expanded"] = any(r["tensor"] in str(w.message) for w in caught)
    return out, records


def _too_many_hint(palette, named=None, keras_model=None):
    """Why ``palette`` holds too many values for one table, naming the argument to change: a
    depthwise kernel is per channel by share_weights' / cluster_weights' default even with
    ``granularity="per_tensor"`` (so that argument is not the fix), other per-channel
    palettes by choice (or a folded BatchNormalization). The ``overrides`` example names
    every depthwise layer among ``named`` (the palettes refused), or their class when they
    share one in ``keras_model``."""
    import json  # noqa: PLC0415

    if palette.layout.granularity != "per_channel":
        return ""
    if palette.layout.kind != "depthwise":  # (cluster_weights' palettes carry no depthwise note)
        return _PER_CHANNEL_HINT
    layers = list(dict.fromkeys(q.layer_name for q in named or [palette]
                                if q.layout.kind == "depthwise"
                                and q.layout.granularity == "per_channel"))
    classes = set()
    for name in layers if keras_model is not None and len(layers) > 1 else ():
        try:
            classes.add(type(keras_model.get_layer(name)).__name__)
        except ValueError:  # not a top-level layer: name them one by one
            classes.add(None)
    keys = [classes.pop()] if len(classes) == 1 and None not in classes else layers
    which = (f"their class, {keys[0]!r} (so every layer of it)," if keys != layers
             else "the layer" if len(layers) == 1 else f"the {len(layers)} layers")
    per_tensor = {k: {"granularity": "per_tensor"} for k in keys}
    return (f". {'It is a depthwise kernel' if len(layers) == 1 else 'They are depthwise kernels'}"
            f", which share_weights and cluster_weights cluster per "
            f"channel by default, granularity=\"per_tensor\" included (one codebook across "
            f"a kernel's channels wrecks its layer: see dkm_tf.graph.layer_config); TFLite Micro "
            f"decodes a float tensor with one value table, which must hold every channel's "
            f"codebook. For format='tflm' name {which} in `overrides`: "
            f"overrides={dict.fromkeys(keys)!r} leaves {'it' if len(layers) == 1 else 'them'} "
            f"float32, overrides={per_tensor!r} clusters per tensor (check the accuracy; "
            f"on the command line: dkm-tf compress --overrides "
            f"'{json.dumps(per_tensor)}'); or use format='palettized'")


_PER_CHANNEL_HINT = (
    ". It is a per-channel palette: TFLite Micro decodes a float tensor with one value "
    "table, which must hold every channel's codebook; cluster it with "
    "granularity=\"per_tensor\" (or fewer clusters) for format='tflm'. A per-tensor "
    "palette becomes per channel when a BatchNormalization after its layer is folded into "
    "it (scale s_c per output channel; strip_clustering and the TFLite converter both fold "
    "it): fold before clustering, dkm_tf.fold_batch_norm(model).model then cluster_weights, or "
    "share_weights (which folds first)")
