"""Layer options :func:`dkm_tf.export.to_tflite` cannot honour, said in words.

* ``stateful=True`` recurrent layers (a fixed batch whose state carries from one call to the
  next): refused before any work. The export verifies at batch 1 and at batch n with a dynamic
  batch, which such a model cannot run; measured before 2026-12-06 it failed with "Invalid
  value for argument `sample_inputs` ... Expected batch size: 3 - Received batch size: 1"
  for correct sample inputs.
* float64 layers: TFLite's builtin kernels (FULLY_CONNECTED, CONV_2D, GATHER of the
  activations, most element-wise ops) have no float64 version. Not refused (a float64
  LayerNormalization converts); a failed conversion names them (`float64_hint`).
* preprocessing layers of numbers (``CategoryEncoding`` count / multi_hot, ``Hashing``,
  ``IntegerLookup``, ...): their TensorFlow ops (tf.DenseBincount, tf.StringToHashBucketFast,
  hash tables) have no builtin kernel. Not refused (a one_hot CategoryEncoding may convert); a
  conversion failed for want of flex ops names them (`flex_layer_hint`), as the refusal of a
  StringLookup of string inputs does; before 2026-12-07 only the TF op was quoted. A layer is
  named only when the converter's text names one of its ops (a one_hot CategoryEncoding beside
  a Lambda of tf.linalg.det: the failure is tf.MatrixDeterminant, and CategoryEncoding was
  blamed before).
"""

import re

_LOOKUP_OPS = ("LookupTableFindV2", "LookupTableImportV2", "HashTableV2",
               "MutableHashTableV2", "MutableDenseHashTableV2", "InitializeTableV2",
               "InitializeTableFromTextFileV2")
# the TF ops each layer runs that TFLite's builtins lack (measured: CategoryEncoding count /
# multi_hot tf.DenseBincount; Hashing tf.StringToHashBucketFast; HashedCrossing
# tf.SparseCross; IntegerLookup tf.LookupTableFindV2)
_FLEX_LAYERS = {
    "CategoryEncoding": ("DenseBincount", "Bincount", "SparseBincount", "RaggedBincount"),
    "Hashing": ("StringToHashBucketFast", "StringToHashBucketStrong", "StringToHashBucket"),
    "HashedCrossing": ("SparseCross", "SparseCrossHashed", "SparseCrossV2"),
    "IntegerLookup": _LOOKUP_OPS,
    "StringLookup": _LOOKUP_OPS,
    "TextVectorization": _LOOKUP_OPS + ("StringSplitV2", "RegexReplace", "StaticRegexReplace",
                                        "StringLower", "RaggedTensorToTensor"),
}


def _layers(model):
    return [model, *model._flatten_layers(include_self=False, recursive=True)]


def stateful_layers(model):
    """Names of the recurrent layers of ``model`` (nested ones included) with stateful=True."""
    return [layer.name for layer in _layers(model) if getattr(layer, "stateful", False) is True]


def check_not_stateful(model):
    """Raise ValueError naming the stateful recurrent layers of ``model``, if any."""
    names = stateful_layers(model)
    if names:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model without stateful recurrent "
            f"layers. Received: stateful=True in {names}. A stateful RNN runs at one fixed "
            "batch with state kept between calls; the .tflite is verified at batch 1 and n "
            "with a dynamic batch. Rebuild the model with stateful=False (the same weights: "
            "`new.set_weights(model.get_weights())`) and export that.")


def float64_hint(model):
    """A sentence naming the layers of ``model`` that compute in float64, or ""."""
    names = [layer.name for layer in _layers(model)[1:]
             if str(getattr(layer, "compute_dtype", "")) == "float64"
             or any(str(v.dtype) == "float64" for v in getattr(layer, "weights", ()))]
    if not names:
        return ""
    shown = names[:8] + (["..."] if len(names) > 8 else [])
    return (f" Layers computing in float64 ({', '.join(shown)}): TFLite has no float64 "
            "kernel for most ops; rebuild them with dtype='float32' (weights cast) to export.")


def flex_layer_hint(model, text):
    """A sentence naming the preprocessing layers of ``model`` (:data:`_FLEX_LAYERS`) when the
    converter's ``text`` says ops need the flex (TensorFlow) kernels and names one of the ops
    such a layer runs (``tf.DenseBincount``: a CategoryEncoding), or ""."""
    if "flex op" not in text and "NEEDS_FLEX_OPS" not in text:
        return ""
    ops = set(re.findall(r"\btf\.([A-Za-z0-9_]+)", text))
    found = [f"{type(layer).__name__} {layer.name!r}" for layer in _layers(model)[1:]
             if ops & set(_FLEX_LAYERS.get(type(layer).__name__, ()))]
    if not found:
        return ""
    shown = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "")
    return (f" Preprocessing layer(s) {shown} run TensorFlow ops that TFLite's builtin ops "
            "lack: apply them in the input pipeline (e.g. dataset.map(layer)) and export the "
            "model that starts at their output (ids or encodings).")
