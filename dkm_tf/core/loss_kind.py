"""Whether a compiled model is a classifier, read from its loss: a regressor (``"mse"``,
``"mae"``, Huber, ...) or a multi-label model (a binary cross-entropy over several sigmoid
units) has no top-1 class, and neither an arg-max nor a softmax over its output means
anything. The model and loss are only read (Keras imported lazily, for the output's op)."""

from __future__ import annotations

from dkm_tf.core.labels import one_loss

__all__ = ["FILE_KEY", "SETTINGS_KEY", "SOURCE_LOSS", "SOURCE_SETTINGS", "assumed_logits",
           "CarriedName", "class_losses", "dropped_name", "file_loss_said", "for_outputs",
           "keep_source_loss", "loss_names", "loss_said", "non_class_loss", "output_activation",
           "probability_rows", "regression_name", "restore_source_loss", "source_loss",
           "source_settings"]

SOURCE_LOSS = "_dkm_tf_source_loss"  # the attribute keep_source_loss sets on a copy
SOURCE_SETTINGS = "_dkm_tf_source_settings"  # and its loss_weights / metrics
FILE_KEY = "dkm_tf_source_loss"  # its key in a saved copy's build_config (config.json)
SETTINGS_KEY = "dkm_tf_source_settings"  # and that of its loss_weights / metrics
_SETTINGS = ("loss_weights", "metrics", "weighted_metrics")

# compiled losses of models whose output is not one class per sample (normalised names)
_REGRESSION = {"mse", "mae", "mape", "msle", "meansquarederror", "meanabsoluteerror",
               "meanabsolutepercentageerror", "meansquaredlogarithmicerror", "huber",
               "logcosh", "poisson", "cosinesimilarity"}
_MULTI_LABEL = {"binarycrossentropy", "binaryfocalcrossentropy"}  # over several output units
# compiled losses that say the output is class scores (logits or probabilities)
_CLASSIFICATION = {"sparsecategoricalcrossentropy", "categoricalcrossentropy",
                   "categoricalfocalcrossentropy", "hinge", "squaredhinge", "categoricalhinge",
                   "kldivergence", "kld", "kullbackleiblerdivergence", "distillation",
                   *_MULTI_LABEL}


def _loss_name(loss):
    return loss if isinstance(loss, str) else (
        getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__)


def loss_names(loss, model=None):
    """How a note names ``loss``: ``"mse"`` (also of ``["mse"]`` / ``{"o": "mse"}`` for
    ``model`` with one output), ``"a: mse, b: SparseCategoricalCrossentropy"``, ``"mse, mae"``
    (a note read "the loss 'ListWrapper'", the type of Keras' tracked list)."""
    if model is None or len(getattr(model, "outputs", None) or [None]) == 1:
        loss = one_loss(loss)
    if isinstance(loss, dict):
        return ", ".join(f"{k}: {_loss_name(v)}" for k, v in loss.items())
    if isinstance(loss, (list, tuple)):
        return ", ".join(_loss_name(v) for v in loss)
    return _loss_name(loss)


def source_loss(model):
    """The loss ``model`` is compiled with; for an uncompiled copy made by ``share_weights`` or
    ``strip_clustering`` that of the model it was made from (:func:`keep_source_loss`); None
    otherwise. Read only here, to tell what the model is: the copy stays uncompiled."""
    if getattr(model, "compiled", False):
        return getattr(model, "loss", None)
    return getattr(model, SOURCE_LOSS, None)


def source_settings(model):
    """The ``loss_weights``, ``metrics`` and ``weighted_metrics`` (a dict of those set, as
    given to ``compile``) ``model`` is compiled with; for an uncompiled copy that carries its
    source's loss (:func:`keep_source_loss`), those of its source; ``{}`` otherwise."""
    if getattr(model, "compiled", False):
        config = getattr(getattr(model, "_compile_config", None), "config", None) or {}
        return {k: config[k] for k in _SETTINGS if config.get(k) is not None}
    return dict(getattr(model, SOURCE_SETTINGS, None) or {})


def for_outputs(value, model, copy):
    """``value`` (a loss, ``loss_weights`` or metrics dict of ``model``'s compile, keyed by
    its output names) keyed by the output names of ``copy``, a copy whose output layers are
    renamed (``cluster_<name>`` and back): Keras refused the old keys in ``fit``, after the
    k-means. Anything else (a list, one loss, a dict of other keys) is returned as it is, and
    so is every value of a model whose outputs are a dict (its keys name them, not layers)."""
    if isinstance(getattr(model, "_outputs_struct", None), dict):
        return value
    src = list(getattr(model, "output_names", None) or ())
    dst = list(getattr(copy, "output_names", None) or ())
    if not isinstance(value, dict) or len(src) != len(dst) or src == dst or not (
            set(value) <= set(src)):
        return value
    rename = dict(zip(src, dst))
    return {rename[k]: v for k, v in value.items()}


def class_losses(loss):
    """Whether ``loss`` (one, or a list / dict of one per output) is a cross-entropy, hinge
    or KL loss for every output (the default ``["accuracy"]`` then means something)."""
    import keras  # noqa: PLC0415

    losses = [one for one in keras.tree.flatten(loss) if one is not None]
    return bool(losses) and all(
        {_key(n) for n in (_loss_name(one), type(one).__name__,
                           getattr(getattr(one, "fn", None), "__name__", None)) if n}
        & _CLASSIFICATION for one in losses)


class CarriedName(str):
    """A loss name read from a saved uncompiled copy's build config (:data:`FILE_KEY`), not
    from a compile config: notes say "the loss 'x' of the model it was copied from"."""

    __slots__ = ()


def loss_said(model, name, loss=None):
    """How a note names the loss ``name`` :func:`non_class_loss` read: ``"compiled with loss
    'x'"``, or, for an uncompiled copy that carries its source's (``loss`` None, or a
    :class:`CarriedName` read from its file), ``"the loss 'x' of the model it was copied
    from"`` (the copy is compiled with none)."""
    if isinstance(loss, CarriedName) or loss is None and not getattr(
            model, "compiled", False) and source_loss(model) is not None:
        return f"the loss {str(name)!r} of the model it was copied from"
    return f"compiled with loss {str(name)!r}"


def file_loss_said(name):
    """How a note says a file has the loss ``name`` (``custom_code.compiled_loss_name``'s):
    ``"was compiled with loss 'x'"``, or for a saved uncompiled copy (a :class:`CarriedName`)
    ``"carries the loss 'x' of the model it was copied from"`` (it is not compiled)."""
    if isinstance(name, CarriedName):
        return f"carries the loss {str(name)!r} of the model it was copied from"
    return f"was compiled with loss {str(name)!r}"


def keep_source_loss(model, copy):
    """Record on ``copy`` (an uncompiled copy of ``model``) the loss ``model`` is compiled
    with (or recorded), for :func:`source_loss`, and its ``loss_weights`` / metrics
    (:func:`source_settings`; a copy was trained without them), keys renamed to the copy's
    output names (:func:`for_outputs`: ``strip_clustering``'s ``cluster_o`` -> ``o``):
    ``to_tflite(strip_clustering(m)[0], ..., "int8")`` of a classifier of logits compiled
    with a cross-entropy noted it as read so "because it is not compiled". ``copy`` is
    returned; nothing is compiled."""
    loss = source_loss(model)
    if loss is not None and copy is not model and not getattr(copy, "compiled", False):
        settings = {k: for_outputs(v, model, copy) for k, v in source_settings(model).items()}
        _carry(copy, for_outputs(loss, model, copy), settings)
    return copy


def _carry(copy, loss, settings, saved=None, saved_settings=None):
    """Set the loss and ``settings`` on ``copy`` and, where Keras can save and load the loss
    back (a name, a Keras or registered loss that loads back the same: ``saved``, its
    serialized form; not a Huber of another delta, which Keras 3.15 does not save), in its
    ``build_config``, which Keras writes to a ``.keras`` file's config.json and ignores on
    load (a built model is not built again): :func:`restore_source_loss` reads it back
    (``copy.save`` lost it before); of ``settings``, those that load back the same."""
    import keras  # noqa: PLC0415

    try:
        object.__setattr__(copy, SOURCE_LOSS, loss)  # not tracked by Keras
        object.__setattr__(copy, SOURCE_SETTINGS, dict(settings))
        if saved is None:
            one = len(getattr(copy, "outputs", None) or [None]) == 1  # a flat list may shrink
            saved = _saved(loss, keras)
            saved_settings = {k: s for k, s in ((k, _saved(v, keras) if k == "loss_weights"
                                                 else _each(v, _saved, keras, shrink=one))
                                                for k, v in settings.items()) if s is not None}
        if saved is not None:
            own = type(copy).get_build_config.__get__(copy)
            extra = {FILE_KEY: saved, **({SETTINGS_KEY: saved_settings} if saved_settings
                                         else {})}
            object.__setattr__(copy, "get_build_config", lambda: (
                None if own() is None else {**own(), **extra}))
    except Exception:  # noqa: BLE001 (no attribute taken)
        pass


def _saved(obj, keras):
    """``obj`` (a loss, loss weights or metrics) serialized, or None where Keras does not
    load it back the same (an unregistered custom object; a Huber's delta, which Keras 3.15
    drops: it would load back as 1.0; a metric whose config changes)."""
    import warnings  # noqa: PLC0415

    obj = _lists(obj)  # Keras loads a tuple back as a list: a tuple loss was not saved (R8)
    try:
        with warnings.catch_warnings():  # Keras' own (a lambda's): not the user's
            warnings.simplefilter("ignore")
            saved = keras.saving.serialize_keras_object(obj)
            back = keras.saving.deserialize_keras_object(saved)  # unregistered: fails
            again = keras.saving.serialize_keras_object(back)
    except Exception:  # noqa: BLE001 (a loss Keras cannot load back)
        return None
    if repr(getattr(back, "_fn_kwargs", None)) != repr(getattr(obj, "_fn_kwargs", None)):
        return None
    return saved if repr(again) == repr(saved) else None


def _lists(obj):
    """``obj`` with its tuples (containers of losses, weights, metrics) as lists."""
    if isinstance(obj, (list, tuple)):
        return [_lists(x) for x in obj]
    return {k: _lists(v) for k, v in obj.items()} if isinstance(obj, dict) else obj


def _each(obj, one, *args, shrink=True):
    """``one(leaf, *args)`` on each metric of ``obj`` (a metric, a list / tuple / dict of
    them, nested), leaving out a leaf ``one`` gives None for: one unsaveable or unknown metric
    drops itself, not the others (review R8); None only for a leaf of None. ``shrink`` False
    (the top level of a model of several outputs, where a flat list is one entry per output):
    a list that would lose a bare leaf gives None (the whole entry left out), not a shorter
    list Keras refuses ("tuple arity mismatch", review R9)."""
    if isinstance(obj, (list, tuple)):
        got = [_each(x, one, *args) for x in obj]
        if not shrink and any(y is None for y in got):
            return None
        return [y for y in got if y is not None]
    if isinstance(obj, dict) and "class_name" not in obj:
        return {k: _each(v, one, *args) for k, v in obj.items()}
    return one(obj, *args)


def _loaded(value, custom_objects, dropped=None):
    """``value`` deserialized, or None (a metric unknown here: left out, it trains the same;
    its name appended to ``dropped`` when given)."""
    import keras  # noqa: PLC0415

    try:
        return keras.saving.deserialize_keras_object(value, custom_objects=custom_objects)
    except Exception:  # noqa: BLE001
        if dropped is not None:
            dropped.append(dropped_name(value))
        return None


def dropped_name(value):
    """How a metric left out is named in notes: its registered or class name (a config)."""
    return repr(value.get("registered_name") or value.get("class_name")
                if isinstance(value, dict) else value)


def restore_source_loss(model, config, custom_objects=None, dropped=None):
    """Give ``model`` (uncompiled, loaded from a file whose config.json is ``config``) the
    source loss a saved ``share_weights`` / ``strip_clustering`` copy carried (see
    :func:`_carry`); returns None, or why it could not (a custom loss not registered here).
    A carried metric not known here is left out, its name appended to ``dropped`` (a list)
    when given."""
    built = config.get("build_config") if isinstance(config, dict) else None
    saved = built.get(FILE_KEY) if isinstance(built, dict) else None
    if saved is None or getattr(model, "compiled", False):
        return None
    import keras  # noqa: PLC0415

    try:
        loss = keras.saving.deserialize_keras_object(saved, custom_objects=custom_objects)
    except Exception as e:  # noqa: BLE001 (an unknown custom loss: said, not raised)
        return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    saved_settings, settings = built.get(SETTINGS_KEY), {}
    for key, value in (saved_settings.items() if isinstance(saved_settings, dict) else ()):
        # a metric unknown here is left out alone (it trains the same), not the loss
        got = _loaded(value, custom_objects) if key == "loss_weights" else _each(
            value, _loaded, custom_objects, dropped, shrink=len(getattr(model, "outputs", None)
                                                                or [None]) == 1)
        if got is not None:
            settings[key] = got
    _carry(model, loss, settings, saved, {k: saved_settings[k] for k in settings})
    return None


def regression_name(name):
    """Whether the loss ``name`` (a file's compiled loss, e.g. ``"mse"``) is a regression loss
    by its name, whatever the output it is computed on (a softmax's rows)."""
    return _key(name) in _REGRESSION


def non_class_loss(model, loss=None):
    """``(loss name, "a regressor" | "multi-label (C sigmoid units)")`` when ``model`` is
    compiled with a regression loss (``"mse"``, ``"mae"``, Huber, ...) or a binary
    cross-entropy over several output units; None otherwise (a cross-entropy, a custom loss,
    a loss per output, or a model that is not compiled): its output is then not one class
    per sample, and neither an arg-max nor a softmax over it means anything. ``loss`` (a
    name or loss) stands for the compiled one, e.g. of a file loaded with compile=False."""
    if loss is None:
        loss = source_loss(model)
    if len(getattr(model, "outputs", None) or [None]) == 1:  # one output: its one loss
        loss = one_loss(loss)
    if loss is None or isinstance(loss, (dict, list, tuple)):
        return None
    if output_activation(model) == "softmax":  # a softmax over classes whatever the loss
        return None  # (a tutorial's binary cross-entropy or mse over one-hot labels)
    keys = {_key(n) for n in (_loss_name(loss), type(loss).__name__,
                              getattr(getattr(loss, "fn", None), "__name__", None)) if n}
    shape = getattr(model, "output_shape", None)
    units = shape[-1] if isinstance(shape, tuple) and shape else None
    if keys & _REGRESSION:
        return _loss_name(loss), "a regressor"
    if keys & _MULTI_LABEL and isinstance(units, int) and units > 1:
        return _loss_name(loss), f"multi-label ({units} units)"
    return None


def assumed_logits(model, loss=None):
    """Why ``model`` is read as a classifier of logits by assumption only: ``"it is not
    compiled"`` (or compiled without a loss) or ``"its compiled loss 'x' does not say"`` (a
    custom or unknown loss). None when its output or loss says what it is: a softmax or
    sigmoid output, a cross-entropy / hinge / KL loss (a classifier), a regression or
    multi-label loss (:func:`non_class_loss`: not read as one), or several outputs. ``loss``
    stands for the compiled one, as in :func:`non_class_loss` (default:
    :func:`source_loss`, so a ``share_weights`` / ``strip_clustering`` copy of a compiled
    model is read by its source's loss)."""
    if len(getattr(model, "outputs", None) or [None]) != 1 or non_class_loss(model, loss):
        return None
    if output_activation(model) in ("softmax", "sigmoid"):
        return None
    compiled = getattr(model, "compiled", False)
    loss = one_loss(loss if loss is not None else source_loss(model))
    if loss is None:
        return "it is compiled without a loss" if compiled else "it is not compiled"
    if isinstance(loss, (dict, list, tuple)):
        return None
    keys = {_key(n) for n in (_loss_name(loss), type(loss).__name__,
                              getattr(getattr(loss, "fn", None), "__name__", None)) if n}
    return None if keys & _CLASSIFICATION else (
        f"its compiled loss {_loss_name(loss)!r} does not say (a loss dkm_tf does not know)")


def probability_rows(outputs, atol=1e-3):
    """Whether a model's one output, as computed on sample inputs (``outputs``: an array, or
    a list holding one), is class probabilities or log-probabilities whatever its last op:
    >= 2 units, every row >= 0 summing to 1, or every row <= 0 whose exp sums to 1 (a
    ``log_softmax``, a ``Lambda`` softmax, which :func:`output_activation` cannot see)."""
    import numpy as np  # noqa: PLC0415

    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            return False
        outputs = outputs[0]
    try:
        rows = np.asarray(outputs, np.float64)
    except (TypeError, ValueError):
        return False
    if rows.ndim < 2 or rows.shape[-1] < 2 or not rows.size or not np.isfinite(rows).all():
        return False
    rows = rows.reshape(-1, rows.shape[-1])
    if rows.min() >= -atol and np.allclose(rows.sum(-1), 1.0, atol=atol):
        return True
    return bool(rows.max() <= atol and np.allclose(np.exp(rows).sum(-1), 1.0, atol=atol))


def _key(name):
    """A loss name normalised: ``"keras>mse"``, ``"losses.Huber"``, ``"mse_loss"``."""
    key = str(name).lower().replace("_", "").rsplit(">", 1)[-1].rsplit(".", 1)[-1]
    return key[:-4] if key.endswith("loss") and key != "loss" else key


# layers and ops whose output holds their input's values (read through by output_activation)
_SAME_VALUES = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                "GaussianDropout", "GaussianNoise", "AlphaDropout", "Reshape", "Flatten",
                "Identity", "ActivityRegularization", "Cast", "Squeeze", "ExpandDims", "Clip",
                "StopGradient"}


def output_activation(model, index=0, _depth=0, _guess=False):
    """Name of the final activation of the model's output ``index``, from the operation that
    produced it (a ``Softmax`` / ``Sigmoid`` layer or op: ``keras.ops.softmax(x)``, the
    ``activation`` of a Keras (or dkm_tf) layer class, a nested model's output; no output
    tensors: the last layer's); ``""`` when unknown (a custom last layer, a user subclass of
    ``Dense`` whose ``activation`` is linear included: its ``call`` may end in a hand
    sigmoid; a subclassed model, or one as
    the last layer, whose last sublayer, a nested model included, reads "linear": its
    ``call`` may end in a hand sigmoid, which was trained as logits and scored at threshold
    0; ``_guess``: the last sublayer's, and any layer's ``activation``, as read before)."""
    import keras  # noqa: PLC0415

    subclassed = False  # no call graph: the last sublayer is a guess
    try:
        tensor = (getattr(model, "outputs", None) or [])[index]
        operation, node_index, tensor_index = tensor._keras_history
        mixed = False  # a reshape / flatten that changed the last axis: rows are no softmax
        for _ in range(100):  # back through ops that keep the values (a cast, a reshape,
            if type(operation).__name__ not in _SAME_VALUES:  # a dropout after a softmax)
                break
            source = operation._inbound_nodes[node_index].input_tensors[0]  # noqa: SLF001
            mixed |= tuple(source.shape[-1:]) != tuple(tensor.shape[-1:])
            operation, node_index, tensor_index = source._keras_history
            tensor = source
    except (AttributeError, IndexError, TypeError, ValueError):
        layers, mixed = getattr(model, "layers", None), False
        operation, tensor_index = (layers[-1] if layers else None), 0
        subclassed = not isinstance(model, keras.Sequential)
    if isinstance(operation, keras.Model) and operation is not model and _depth < 20:
        found = output_activation(operation, tensor_index, _depth + 1, _guess)
    else:
        name = type(operation).__name__  # keras.ops.softmax / sigmoid of a symbolic tensor
        own = type(operation).__module__.split(".")[0] in ("keras", "dkm_tf")  # not a user
        found = name.lower() if isinstance(operation, keras.layers.Softmax) or (  # subclass
            name in ("Softmax", "Sigmoid") and not isinstance(operation, keras.layers.Layer)) \
            else getattr(getattr(operation, "activation", None), "__name__", "")
        if not (own or _guess) and found == "linear":
            found = ""  # a user subclass's call may end in a hand sigmoid (its softmax /
            # sigmoid is read: review R11, a MyDense(3, "softmax") read "" lost its figure)
    if subclassed and not _guess and found == "linear":
        return ""  # its call may apply anything after that sublayer (review R3)
    return "" if mixed and found == "softmax" else found  # a flattened per-position softmax
