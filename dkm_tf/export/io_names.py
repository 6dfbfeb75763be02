"""Signature input names of an exported ``.tflite``: the Keras model's input names.

Before 2026-12-07 every file named its inputs ``input_0``, ``input_1``, ... (a model of
``keras.Input((10,), dtype="int32", name="tok")`` and ``keras.Input((5,), name="feat")`` ran as
``runner(input_0=tokens, input_1=features)`` and refused ``tok=``). The converter still sees
``input_i`` (TensorFlow's name rules are stricter than a signature's, and
:func:`~dkm_tf.export.canonical.order_io` orders the file's inputs by ``i``); after that, the
signature's inputs, and the input tensors ``serving_default_input_i:0``, are renamed.

The rule (:func:`signature_keys`), for input ``i`` in ``model.inputs`` order:

* its Keras name: the key of a Functional model built on a dict of inputs, else the input
  layer's name (what ``model.summary()`` shows and ``model.predict({...})`` takes: ``"tok"``;
  ``"input_layer"`` / ``"input_layer_3"`` for an unnamed ``keras.Input`` or a Sequential);
* each character other than an ASCII letter, digit or ``_`` becomes ``_`` (``"my input"`` ->
  ``"my_input"``, ``"a:b"`` -> ``"a_b"``), so the key is a Python identifier and
  ``runner(key=...)`` works;
* ``input_i`` where that leaves no usable key: empty, only ``_``, starting with a digit, or a
  Python keyword (``"1st"``, ``"é"``, ``"class"``), and for every input of a model that
  declares none (a subclassed model);
* a key already taken by an earlier input gets ``_2``, ``_3``, ... (``"a-b"`` and ``"a_b"``
  give ``a_b`` and ``a_b_2``).

Outputs keep ``output_0``, ``output_1``, ... (Keras 3 names an output tensor after no layer
but ``keras_tensor_N``, a counter of the process).
"""

from __future__ import annotations

import keyword
import re

__all__ = ["file_keys", "input_keys", "keras_input_names", "name_inputs", "signature_keys"]

_BAD = re.compile(r"[^A-Za-z0-9_]")
_USABLE = re.compile(r"_*[A-Za-z][A-Za-z0-9_]*")
_INDEXED = re.compile(r"input_(\d+)")


def keras_input_names(model):
    """The Keras names of ``model``'s inputs in ``model.inputs`` order ([] for none)."""
    try:
        inputs = list(model.inputs or ())
    except (AttributeError, TypeError, ValueError):  # a subclassed model declares none
        return []
    struct = getattr(model, "_inputs_struct", None)
    key_of = {id(t): k for k, t in struct.items()} if isinstance(struct, dict) else {}
    names = []
    for t in inputs:
        history = getattr(t, "_keras_history", None)
        layer = getattr(history, "operation", None)
        names.append(str(key_of.get(id(t), getattr(layer, "name", None)
                                    or getattr(t, "name", ""))))
    return names


def signature_keys(names, n=None):
    """The signature keys for Keras input ``names`` (module docstring); ``n`` inputs of
    ``input_i`` when ``names`` does not name ``n`` inputs."""
    n = len(names) if n is None else n
    if len(names) != n:
        names = [""] * n
    keys, taken = [], set()
    for i, name in enumerate(names):
        key = _BAD.sub("_", str(name))
        if not _USABLE.fullmatch(key) or keyword.iskeyword(key):
            key = f"input_{i}"
        base, k = key, 2
        while key in taken:
            key, k = f"{base}_{k}", k + 1
        keys.append(key)
        taken.add(key)
    return keys


def input_keys(model, n):
    """:func:`signature_keys` of ``model``'s inputs, for a file of ``n`` inputs."""
    return signature_keys(keras_input_names(model), n)


def name_inputs(content, keys):
    """``content`` (``.tflite`` bytes whose signature inputs are ``input_0 .. input_{n-1}``)
    with input ``i`` renamed ``keys[i]``: the signature's key and the input tensor's name
    (``serving_default_input_0:0`` -> ``serving_default_tok:0``). Unchanged bytes where the
    keys are already ``input_i`` or the signature is not ``input_0 .. input_{n-1}``."""
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    if list(keys) == [f"input_{i}" for i in range(len(keys))]:
        return bytes(content)
    fm = FlatModel.from_bytes(content)
    sigs = [sd for sd in fm.model.signatureDefs or () if int(sd.subgraphIndex or 0) == 0]
    if len(sigs) != 1:
        return bytes(content)
    entries = list(sigs[0].inputs or ())
    index = [_INDEXED.fullmatch(_text(e.name)) for e in entries]
    if len(entries) != len(keys) or not all(index) or \
            sorted(int(m.group(1)) for m in index) != list(range(len(keys))):
        return bytes(content)
    for e, m in zip(entries, index):
        old, new = m.group(0), keys[int(m.group(1))]
        e.name = new
        t = fm.tensors[int(e.tensorIndex)]
        name = _text(t.name)
        if name.startswith(f"serving_default_{old}:"):
            t.name = f"serving_default_{new}:" + name.split(":", 1)[1]
    return fm.to_bytes()


def file_keys(content):
    """The signature input keys of ``.tflite`` bytes, in the order the file stores them
    (Keras order for an exported file: :func:`~dkm_tf.export.canonical.order_io`)."""
    from dkm_tf.export.rewrite import schema  # noqa: PLC0415

    model = schema().Model.GetRootAs(content, 0)
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        if sd.SubgraphIndex() == 0:
            return [sd.Inputs(j).Name().decode() for j in range(sd.InputsLength())]
    return []


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)
