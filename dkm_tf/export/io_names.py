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
  ``"input_layer"`` / ``"input_layer_3"`` for an unnamed ``keras.Input`` or a Sequential),
  kept as it is where it is a usable key (first pass, so no other input can take it);
* else each character other than an ASCII letter, digit or ``_`` becomes ``_`` (``"my input"``
  -> ``"my_input"``, ``"a:b"`` -> ``"a_b"``), so the key is a Python identifier and
  ``runner(key=...)`` works;
* ``input_i`` where that leaves no usable key: empty, only ``_``, starting with a digit, a
  Python keyword or ``self`` (``"1st"``, ``"é"``, ``"class"``; LiteRT's
  ``SignatureRunner.__call__(self, **kwargs)`` cannot take ``self=``), and for every input of
  a model that declares none (a subclassed model);
* a sanitised or fallback key that another input's name already is, or an earlier one took,
  gets ``_2``, ``_3``, ... (``"a:b"`` and ``"a_b"`` give ``a_b_2`` and ``a_b``: the input named
  ``a_b`` keeps its name; before 2026-12-07 it became ``a_b_2`` and its name fed the other
  input). Three passes: usable names, then sanitised ones, then ``input_i``, so a fallback
  never takes a later input's sanitised name (``"1st"``, ``"input-0"`` give ``input_0_2`` and
  ``input_0``: the key ``input_0`` feeds the input whose name reads so, not input 0; before
  the third pass ``input_0`` and ``input_0_2``). A key ``input_<n>`` is thus a position only
  where no input's name gives it.

:func:`check_names` checks a renamed file (each key on the tensor of its Keras input, in
Keras order), so a renaming error is an internal error, never a file fed the wrong way.

The signature runner's ``get_input_details()`` lists the keys alphabetically; the file's
subgraph inputs (``Interpreter.get_input_details()``, :func:`file_keys`) are in Keras order.

Outputs keep ``output_0``, ``output_1``, ... (Keras 3 names an output tensor after no layer
but ``keras_tensor_N``, a counter of the process).
"""

from __future__ import annotations

import keyword
import re

__all__ = ["check_names", "file_keys", "input_keys", "keras_input_names", "name_inputs",
           "signature_keys"]

_BAD = re.compile(r"[^A-Za-z0-9_]")
_USABLE = re.compile(r"_*[A-Za-z][A-Za-z0-9_]*")
_INDEXED = re.compile(r"input_(\d+)")
_RESERVED = frozenset({"self"})  # SignatureRunner.__call__(self, **kwargs)


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
    names = [str(x) for x in names] if len(names) == n else [""] * n
    keys, taken = [None] * n, set()
    for i, name in enumerate(names):  # names that are keys already keep them
        if _usable(name) and name not in taken:
            keys[i] = name
            taken.add(name)
    for fallback in (False, True):  # sanitised names, then input_i: no one takes another's
        for i, name in enumerate(names):
            if keys[i] is not None:
                continue
            key = f"input_{i}" if fallback else _BAD.sub("_", name)
            if not fallback and not _usable(key):
                continue
            base, k = key, 2
            while key in taken:
                key, k = f"{base}_{k}", k + 1
            keys[i] = key
            taken.add(key)
    return keys


def _usable(key):
    """A key ``runner(key=...)`` takes: an identifier with a letter, no keyword, not ``self``."""
    return bool(_USABLE.fullmatch(key)) and not keyword.iskeyword(key) and key not in _RESERVED


def input_keys(model, n):
    """:func:`signature_keys` of ``model``'s inputs, for a file of ``n`` inputs."""
    return signature_keys(keras_input_names(model), n)


def name_inputs(content, keys):
    """``content`` (``.tflite`` bytes whose signature inputs are ``input_0 .. input_{n-1}``)
    with input ``i`` renamed ``keys[i]``: the signature's key and the input tensor's name
    (``serving_default_input_0:0`` -> ``serving_default_tok:0``). Unchanged bytes where the
    keys are already ``input_i`` or the signature is not ``input_0 .. input_{n-1}``
    (:func:`check_names` then refuses the file)."""
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
    order = sorted(range(len(entries)), key=lambda j: int(index[j].group(1)))
    entries, index = [entries[j] for j in order], [index[j] for j in order]
    sigs[0].inputs = entries  # stored in Keras order, too
    for e, m in zip(entries, index):
        old, new = m.group(0), keys[int(m.group(1))]
        e.name = new
        t = fm.tensors[int(e.tensorIndex)]
        name = _text(t.name)
        if name.startswith(f"serving_default_{old}:"):
            t.name = f"serving_default_{new}:" + name.split(":", 1)[1]
    return fm.to_bytes()


def file_keys(content):
    """The signature input keys of ``.tflite`` bytes in the order of the subgraph's inputs
    (what ``Interpreter.get_input_details()`` lists, and TFLite Micro's input ``j``: Keras order
    for an exported file), whatever order the signature stores them in; a key whose tensor is
    no subgraph input comes last."""
    sig, inputs = _signature(content)
    if sig is None:
        return []
    at = {t: j for j, t in enumerate(inputs)}
    names = list(sig)  # the signature's stored order
    order = sorted(range(len(names)), key=lambda j: at.get(sig[names[j]], len(at) + j))
    return [names[j] for j in order]


def check_names(before, after, keys):
    """``after``, :func:`name_inputs` of ``before`` (canonical bytes whose signature inputs are
    ``input_0 .. input_{n-1}``, subgraph input ``i`` = ``input_i``), checked: its keys in
    subgraph order are ``keys`` and the key ``keys[i]`` is the tensor ``input_i`` was. A
    RuntimeError otherwise (an internal error, not the model's: a file whose names fed the
    wrong inputs, or a converter that no longer keeps the ``input_i`` names it is given,
    would run silently wrong or not as documented). ``after`` unchanged where ``before`` has
    no signature (verification refuses that file)."""
    was, inputs = _signature(before)
    if was is None:
        return after
    n = len(keys)
    expect = [f"input_{i}" for i in range(n)]
    if sorted(was) != sorted(expect) or inputs[:n] != [was[k] for k in expect]:
        raise RuntimeError(f"Internal error exporting to .tflite: expected the converter's "
                           f"signature inputs {expect} on subgraph inputs 0..{n - 1} in that "
                           f"order; received {dict(sorted(was.items()))} on subgraph inputs "
                           f"{inputs} (cannot name them {list(keys)}). Please report it.")
    now, _ = _signature(after)
    want = {k: was[f"input_{i}"] for i, k in enumerate(keys)}
    if now != want or file_keys(after) != list(keys):
        raise RuntimeError(f"Internal error exporting to .tflite: the renamed signature "
                           f"inputs are {now} (in subgraph order {file_keys(after)}); expected "
                           f"{want}, the Keras inputs' keys {list(keys)} on their tensors. "
                           "Please report it.")
    return after


def _signature(content):
    """``({key: tensor index}, [subgraph input tensors])`` of subgraph 0's signature
    (``(None, [])`` for none)."""
    from dkm_tf.export.rewrite import schema  # noqa: PLC0415

    model = schema().Model.GetRootAs(content, 0)
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        if sd.SubgraphIndex() == 0:
            graph = model.Subgraphs(0)
            return ({sd.Inputs(j).Name().decode(): int(sd.Inputs(j).TensorIndex())
                     for j in range(sd.InputsLength())},
                    [int(graph.Inputs(j)) for j in range(graph.InputsLength())])
    return None, []


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)
