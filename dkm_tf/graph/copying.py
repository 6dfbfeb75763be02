"""Copying Keras models and layers: every copy is independent and built from its values.

The one place that rebuilds Keras objects: :func:`copy_layer` (a layer from its config, its
weights created directly from given values), :func:`copy_model` / :func:`clone_uncompiled`
(Sequential and Functional models, nested ones included) and :func:`save_model_atomic`.
Post-training sharing, the clustering wrapper and the re-training loop all copy through here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dkm_tf.core.files import atomic_path, check_target

__all__ = ["build_like", "clone_uncompiled", "copy_layer", "copy_model", "is_graph_model",
           "iter_layers", "keep_dtype_policy", "layers_only", "save_model_atomic"]


def iter_layers(model):
    """The leaf layers of a model, depth first through nested models; shared layers once."""
    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415 (imports keras)

    return [layer for layer in walk_layers(model) if not getattr(layer, "layers", None)]


def build_like(new, layer, values=None):
    """Build ``new`` with ``layer``'s input shape and, if given, the weight ``values``.

    With ``values`` (``layer.get_weights()`` order) every weight is created directly from its
    value: no random initialiser, no second copy through ``set_weights`` (on VGG16 this is
    most of the cost of a copy). If the layer creates its weights in another order or through
    sublayers, the values are assigned with ``set_weights`` afterwards. Either way the fresh
    layer's random initialisers are swapped for zeros during ``build`` and put back.
    """
    import keras  # noqa: PLC0415

    build_config = layer.get_build_config()
    if build_config is None:
        raise ValueError(f"Layer {layer.name!r} is built but records no input shape "
                         "(get_build_config() is None); cannot copy it.")
    saved = {k: v for k, v in vars(new).items()
             if k.endswith("_initializer") and isinstance(v, keras.initializers.Initializer)}
    for k in saved:
        object.__setattr__(new, k, keras.initializers.Zeros())
    created = []
    if values is not None:
        object.__setattr__(new, "add_weight", _value_add_weight(new.add_weight, values, created))
    try:
        # Keras' own build() only sets built (and warns): built by a call below, unless the
        # layer overrides build_from_config (Keras' hook for weights made outside build())
        if (not getattr(new.build, "_is_default", False)
                or type(new).build_from_config is not keras.layers.Layer.build_from_config):
            new.build_from_config(build_config)
    finally:
        new.__dict__.pop("add_weight", None)
        for k, v in saved.items():
            object.__setattr__(new, k, v)
    expected = len(layer.weights if values is None else values)
    if not new.built or len(new.weights) != expected:
        _build_by_calling(new, layer, build_config, expected)
    if values is not None and [id(v) for v in new.weights] != [id(v) for v in created]:
        new.set_weights(values)


def _build_by_calling(new, layer, build_config, expected):
    """Build ``new`` by calling it on symbolic inputs like ``layer``'s.

    A layer with no ``build()`` of its own whose sublayers (a ``Dense`` made in ``__init__``)
    build at their first call has no weights after ``build_from_config`` (Keras' default
    ``build`` only marks it built): its copy kept fresh random sublayer weights (outputs off by
    1.79 after a lossless ``share_weights``). It is called on inputs of the original's first
    call (or of its build shape) here, and refused if its weights still do not match.
    """
    import keras  # noqa: PLC0415
    from keras import tree  # noqa: PLC0415

    def fresh(t):
        return keras.KerasTensor(t.shape, dtype=t.dtype, sparse=getattr(t, "sparse", False))

    nodes = getattr(layer, "_inbound_nodes", None) or []
    if nodes:
        args = tree.map_structure(
            lambda t: fresh(t) if isinstance(t, keras.KerasTensor) else t, nodes[0].arguments.args)
        kwargs = tree.map_structure(
            lambda t: fresh(t) if isinstance(t, keras.KerasTensor) else t,
            nodes[0].arguments.kwargs)
    else:
        shapes = build_config.get("shapes_dict") or {"input_shape": build_config.get("input_shape")}
        args = tuple(tree.map_shape_structure(
            lambda s: keras.KerasTensor(s, dtype=layer.input_dtype), shape)
            for shape in shapes.values())
        kwargs = {}
    count = len(getattr(new, "_inbound_nodes", []))
    error = None
    try:
        new(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported below, with the layer's name
        error = e
    finally:
        del new._inbound_nodes[count:]  # noqa: SLF001 - no node outside the copied graph
    if len(new.weights) != expected:
        raise TypeError(
            f"Layer {layer.name!r} ({type(layer).__name__}) cannot be copied: its copy from "
            f"get_config() has {len(new.weights)} weight(s) after building, the layer "
            f"{expected}, so its values cannot be given to it (a layer that makes "
            "sublayers or weights at its first call needs a build() that creates them)"
            + (f"; calling the copy failed: {type(error).__name__}: {error}" if error else "")
            + ".")
    new.built = True  # (as Keras' default build() did: its weights are all there)


def _value_add_weight(add_weight, values, created):
    """``add_weight`` that initialises the i-th weight created with ``values[i]``.

    The weights are not created in that order when ``created`` ends up differing from the
    layer's ``weights``: :func:`build_like` then falls back to ``set_weights``.
    """
    def patched(*args, **kwargs):
        i = len(created)
        shape = args[0] if args else kwargs.get("shape")
        if i < len(values) and shape is not None and tuple(shape) == values[i].shape:
            def init(shape, dtype=None, value=values[i]):
                return value
            if len(args) >= 2:
                args = (args[0], init, *args[2:])
            else:
                kwargs["initializer"] = init
        else:  # out of step: leave every later value to set_weights
            created.append(None)
        var = add_weight(*args, **kwargs)
        created.append(var)
        return var
    return patched


def layers_only(clone_function):
    """``clone_function`` for layers; any other operation of a Functional graph is copied
    from its config as ``keras.models.clone_model`` would.

    ``x + y`` or ``keras.ops.relu(x)`` on symbolic tensors puts a stateless
    ``keras.Operation`` (no ``weights``, nothing to cluster) into the graph, and
    ``clone_model`` hands it to the clone function like a layer.
    """
    import keras  # noqa: PLC0415

    def fn(op):
        if isinstance(op, keras.layers.Layer):
            return clone_function(op)
        try:
            return op.__class__.from_config(op.get_config())
        except Exception:  # noqa: BLE001 - a stateless op can be reused as it is
            return op

    return fn


def copy_layer(layer, values=None):
    """A new layer with the same config and the same weight values (never shares state).

    ``values`` (``layer.get_weights()`` order) replace the layer's own weight values. The
    functions the layer holds (an activation, a ``Lambda``'s named function) are the copy's, and
    its unregistered regularizer / initializer / constraint classes are found
    (:func:`dkm_tf.graph.own_config.from_own_config`).
    """
    from dkm_tf.graph.own_config import from_own_config  # noqa: PLC0415

    try:
        new = from_own_config(layer)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise _not_copied(layer, e) from e
    if layer.built and layer.weights:
        build_like(new, layer, layer.get_weights() if values is None else values)
    if hasattr(layer, "save_assets"):  # state kept as assets (a lookup's vocabulary)
        _copy_assets(layer, new)
    return new


def _is_keras_lookup(layer):
    """Whether ``layer`` is one of Keras' own lookups (``IntegerLookup``, ``StringLookup``,
    ``TextVectorization`` or a subclass). Only these get their own variables store copied by
    :func:`_copy_assets` (a tf_idf layer's idf weights); a custom layer's own
    ``save_own_variables`` would put its original weights back over the ``values`` a copy
    was given (a clustered Dense subclass with asset hooks kept 12 distinct values under a K=2
    palette)."""
    import keras  # noqa: PLC0415

    kinds = (keras.layers.IntegerLookup, keras.layers.StringLookup, keras.layers.TextVectorization)
    return isinstance(layer, kinds)


def _copy_assets(layer, new):
    """Give ``new`` the state ``layer`` keeps outside its weights, as ``model.save`` would.

    An adapted ``IntegerLookup`` / ``StringLookup`` / ``TextVectorization`` keeps its
    vocabulary as Keras assets (and a ``tf_idf`` layer its idf weights in its own variables
    store), not as weights: its copy from the config read ``['', '[UNK]']`` and raised "Table
    not initialized" when called. Copied through Keras' own save/load hooks, in that order.
    """
    import tempfile  # noqa: PLC0415

    # Layer's own hooks store the weights, which build_like gave (or replaced) already; a
    # custom layer's assets (any state it keeps there) are copied, its weights are not
    if _is_keras_lookup(layer):  # IndexLookup / TextVectorization define their own
        store = {}
        try:
            layer.save_own_variables(store)
        except AttributeError:  # an un-adapted tf_idf lookup has no idf weights to save
            store = {}
        if store:
            new.load_own_variables(store)
    with tempfile.TemporaryDirectory(prefix="dkm_tf_assets_") as d:
        ours, fresh = os.path.join(d, "layer"), os.path.join(d, "copy")
        os.mkdir(ours)
        os.mkdir(fresh)
        layer.save_assets(ours)
        new.save_assets(fresh)
        if _files(ours) != _files(fresh):  # an un-adapted layer's empty vocabulary: as it is
            new.load_assets(ours)


def _files(folder):
    """``{relative path: bytes}`` of the files below ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _not_copied(layer, e):
    """The TypeError of a layer that cannot be rebuilt from its config, with a hint."""
    import keras  # noqa: PLC0415

    hint = " (it needs get_config()/from_config())."
    if isinstance(layer, keras.layers.Lambda):  # Keras' safe mode refuses Python code
        hint = ("" if "enable_unsafe_deserialization" in str(e) else
                " If you trust the code, call keras.config.enable_unsafe_deserialization().")
    return TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot be copied from "
                     f"its config: {type(e).__name__}: {e}{hint}")


def is_graph_model(model):
    """True for Sequential and Functional models (what ``keras.models.clone_model`` copies)."""
    import keras  # noqa: PLC0415

    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def clone_uncompiled(model, clone_function):
    """``keras.models.clone_model(model, clone_function, recursive=True)``, never compiled.

    Keras re-compiles a cloned Sequential from its serialized compile config, which fails for
    a custom loss or metric that is not registered for serialization (a plain function in the
    user's script). Every caller here compiles its copy itself (with the original model's loss
    object), so the models are marked uncompiled while they are cloned.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415
    from dkm_tf.graph.optional_inputs import keep_optional_inputs  # noqa: PLC0415

    models = [model] + [m for m in walk_layers(model) if isinstance(m, keras.Model)]
    compiled = [m for m in models if getattr(m, "compiled", False)]
    for m in compiled:
        m.compiled = False
    try:
        clone = keras.models.clone_model(model, input_tensors=_named_inputs(model),
                                         clone_function=layers_only(clone_function),
                                         recursive=True)
    finally:
        for m in compiled:
            m.compiled = True
    _restore_model_flags(models, [clone] + [m for m in walk_layers(clone)
                                            if isinstance(m, keras.Model)])
    return keep_optional_inputs(model, clone)  # Keras' new inputs are not optional


def _named_inputs(model):
    """New inputs of a Functional ``model`` named as its input layers, or None (Keras' own).

    ``clone_model`` names each new ``Input`` after the old input's tensor, and an unnamed
    ``keras.Input`` has tensor ``keras_tensor...`` but layer ``input_layer...``: every copy
    (``share_weights``, ``cluster_weights``, ``strip_clustering``) renamed the model's inputs,
    so ``predict({"input_layer": x})`` and ``sample_inputs={"input_layer": x}`` that worked on
    the original failed on the copy."""
    import keras  # noqa: PLC0415

    if isinstance(model, keras.Sequential) or not is_graph_model(model):
        return None
    try:
        layers = [t._keras_history.operation for t in model.inputs]  # noqa: SLF001
    except AttributeError:
        return None
    if all(t.name == la.name for t, la in zip(model.inputs, layers)):  # as Keras would
        return None
    named = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=la.name)
             for t, la in zip(model.inputs, layers)]
    return keras.tree.pack_sequence_as(model.input, named)


def _restore_model_flags(originals, clones):
    """Give each cloned (nested) model its original's ``trainable`` flag and dtype policy,
    which ``clone_model`` drops.

    The flag is set without setting it on the layers: they keep their own flags (a frozen
    base's are False), and a later ``base.trainable = True`` unfreezes them as it would have on
    the original (Keras' setter does nothing visible when the flag already reads True).
    The model's own policy is the global one at cloning time otherwise: a model built under
    ``mixed_float16`` and copied after ``set_global_policy("float32")`` lost the loss scaling
    that ``compile`` gives a ``mixed_float16`` model (its float16 gradients then underflow).
    """
    by_name = {m.name: m for m in originals}
    for i, clone in enumerate(clones):
        original = originals[i] if i < len(originals) and originals[i].name == clone.name \
            else by_name.get(clone.name)
        if original is not None:
            clone._trainable = original.trainable  # noqa: SLF001 - the flag only
            keep_dtype_policy(original, clone)


def keep_dtype_policy(original, clone):
    """Give the model ``clone`` the dtype policy of the model ``original`` (see
    :func:`_restore_model_flags`); a quantized or per-layer (map) policy is left alone."""
    policy = getattr(original, "dtype_policy", None)
    if (getattr(policy, "quantization_mode", "?") is None and not isinstance(policy, Mapping)
            and clone.dtype_policy.name != policy.name):
        clone.dtype_policy = policy
    return clone


def copy_model(model):
    """An independent, uncompiled copy of a Sequential or Functional model, same weights.

    Raises:
        TypeError: for subclassed models, which Keras cannot clone (the message says what to
            do instead), or when Keras fails to clone a Sequential/Functional model (the
            message gives Keras' reason).
        ValueError: a clusterable weight read by another layer of the model (tied weights,
            :mod:`dkm_tf.graph.tied`): the copy could not keep the tie.
    """
    import keras  # noqa: PLC0415

    if isinstance(model, keras.Model):  # dkm_retrain trains such a copy
        from dkm_tf.graph.tied import CLONE_WHY, check_no_tied_reads  # noqa: PLC0415

        check_no_tied_reads(model, "copy_model", CLONE_WHY.format(
            entry="copy_model (dkm_retrain and compress(method='dkm') train such a copy)",
            extra=""))
    return _copy_model(model, copy_layer)


class _NotACopyError(Exception):
    """Carries an error of a clone function's own work (its ``__cause__``) through
    :func:`_copy_model`, which would otherwise report it as a failure to copy."""


def _copy_model(model, clone_function):
    """``clone_uncompiled`` with Keras' failures turned into a TypeError that says what to do."""
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: {type(model).__name__}")
    try:  # layer copies built from their values: no random init of big kernels
        clone = clone_uncompiled(model, clone_function)
    except _NotACopyError as e:
        raise e.__cause__  # noqa: B904 - the original error, with its own traceback
    except Exception as e:  # subclassed models raise various errors here
        if is_graph_model(model):
            raise TypeError(f"Cannot copy model {model.name!r} ({type(model).__name__}): "
                            f"keras.models.clone_model failed: {e}") from e
        raise TypeError(
            f"Cannot copy model {model.name!r} of type {type(model).__name__}: only Sequential "
            "and Functional models (possibly nested) can be copied. For a subclassed model, "
            "build it as a Functional model, cluster its layers individually, or (post-"
            "training) call share_weights(model, ..., inplace=True)."
        ) from e
    return clone



def save_model_atomic(model, path):
    """Save a Keras model to ``path`` (``.keras``) through a temp file and a rename."""
    path = check_target(path)  # bytes, a folder, '~': refused before the save
    if not path.endswith(".keras"):
        raise ValueError(f"Invalid value for argument `path`. Expected a file name ending in "
                         f"'.keras'. Received: path={path!r}")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path
