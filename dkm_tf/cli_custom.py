"""``--custom_objects`` of ``dkm-tf compress``, ``dkm-tf energy`` and ``export/to_tflite.py``:
the user's ``.py`` files or modules, imported before ``--model`` loads, so that the custom
layers, activations, losses, metrics, regularizers, constraints and initializers the model
file names are known (registered ones by their ``register_keras_serializable`` name, the
others by the class or function name, through a ``keras.saving.custom_object_scope``).

A missing file or one that fails to import is a usage error naming the flag, the file and
the import error's first line; a model that fails to load because it names a class or
function that is not known says which ones and to pass the flag (:func:`load_error`).
"""

from __future__ import annotations

import contextlib
import math

HELP = ("Comma-separated .py files or module names that define (and register) the "
        "custom classes and functions of --model (layers, activations, losses, metrics, "
        "regularizers, ...), imported before it loads, e.g. my_layers.py,userpkg.losses.")
REMEDY = "Pass the .py files or modules that define them: --custom_objects my_layers.py"


def custom_code(spec, flag="custom_objects", usage_error=None, model_path=None):
    """A context manager under which ``--model`` loads with the code of ``spec`` (a
    comma-separated str or a list of ``.py`` files / module names; None: none): the modules
    are imported now (their registered classes become known) and the classes and functions
    they define are in a ``keras.saving.custom_object_scope`` inside the ``with``, except
    those named like a Keras built-in (a helper ``relu`` would replace Keras' own in the
    whole model) unless the config of ``model_path`` names them from a user's module.

    A bad item raises ``usage_error(flag, expected, received)`` when given (the command
    line's ``CliUsageError``), else the ``ValueError`` / ``TypeError`` naming ``flag``."""
    from dkm_tf.core.custom_code import import_custom_code  # noqa: PLC0415

    try:
        objects = import_custom_code(spec, flag, path=model_path)
    except (ValueError, TypeError) as e:
        if usage_error is None:
            raise
        expected = ("comma-separated .py files or importable module names that define the "
                    "model's custom classes and functions")
        error = usage_error(flag, expected, spec)
        if hasattr(e, "why"):  # the file or module at fault, and why (a missing file, ...)
            error.args = (f"invalid --{flag}: {e.item!r} {e.why}; expected {expected}",)
        raise error from e
    if not objects:
        return contextlib.nullcontext()
    import keras  # noqa: PLC0415

    return keras.saving.custom_object_scope(objects)


def load_error(error, model_path, flag="model"):
    """The ``ValueError`` for ``--model model_path`` that failed to load (``error``) because
    it names custom code that is not known here (the names, and to pass
    ``--custom_objects``), or None when that is not why (``compile=False`` loads)."""
    from dkm_tf.core.custom_code import unknown_code_error  # noqa: PLC0415

    return unknown_code_error(error, model_path, f"Could not load --{flag} {model_path!r}",
                              REMEDY, compiled=False)


def loss_note(model_path, method, weighting, model=None, train=None):
    """A note when ``dkm-tf compress`` trains (``method`` finetune / dkm, or ``weighting``
    fisher) a ``--model`` file compiled with a loss: the command line loads it without its
    compile config and trains with the cross-entropy of its output, not that loss (which was
    silently replaced); else None. A (sparse) categorical or binary cross-entropy is that
    loss on class ids: noted where the file's loss has settings the default lacks (label
    smoothing, ``ignore_class``, a summed reduction: trained without them), or where its
    ``from_logits`` differs from the one the loaded ``model``'s output activation gives (when
    ``model`` is given; a custom last layer: its outputs on ``train``'s inputs, rows of
    probabilities: False). With ``model``, a
    regression or multi-label loss gets none (:func:`train_loss`: it trains with it), unless
    the outputs on ``train``'s inputs (``(x, y)``) are rows of (log-)probabilities (a
    ``log_softmax`` or ``Lambda`` softmax compiled with ``"mse"``: class scores, trained with
    the cross-entropy, as a softmax output compiled with it is)."""
    from dkm_tf.core.custom_code import compiled_from_logits, compiled_loss_name  # noqa: PLC0415

    if method == "wr" and not weighting:
        return None
    loss = compiled_loss_name(model_path)
    verb = "weighs by" if method == "wr" else "trains with"
    if loss is not None and loss.replace("_", "").lower() in (
            "sparsecategoricalcrossentropy", "categoricalcrossentropy", "binarycrossentropy"):
        saved, unused = compiled_from_logits(model_path), _unused_settings(model_path)
        from dkm_tf.core.loss_kind import file_loss_said  # noqa: PLC0415

        said = [f"{model_path} {file_loss_said(loss)} ({', '.join(unused)}); dkm-tf compress "
                f"{verb} the cross-entropy of the model's output (class-id labels) without "
                f"{'them' if len(unused) > 1 else 'it'}: to keep the loss, call dkm_tf.compress "
                "in Python on the model compiled with it (with the labels it takes)"] if (
            unused) else []  # label smoothing, ...: the default cross-entropy has none
        if model is not None and saved is not None:
            from dkm_tf.cli_unit import follows_file  # noqa: PLC0415
            from dkm_tf.training.common import default_loss  # noqa: PLC0415
            from dkm_tf.training.compile_settings import sample_inputs  # noqa: PLC0415

            x = sample_inputs(model, train)  # a custom last layer: its outputs on the data
            used = saved if follows_file(model, model_path) else default_loss(
                model, x=x).get_config().get("from_logits")  # a custom one-unit layer: the file's
            said += [] if used == saved else [
                f"{model_path} was compiled with {loss} from_logits={saved}; dkm-tf compress "
                f"{verb} it with from_logits={used}, read from the model's output activation"
                + (" and its outputs on the --dataset inputs" if x is not None else "") +
                " (check that the file's last activation is what you expect)"]
        return "; ".join(said) or None
    from dkm_tf.core.loss_kind import CarriedName, file_loss_said, non_class_loss  # noqa: PLC0415

    if loss is None or model is not None and non_class_loss(model, loss) and not (
            _class_rows(model, train)):  # a regressor's loss: trained with it (train_loss;
        return None  # a multi-label one is refused there)
    from dkm_tf.core.loss_kind import regression_name  # noqa: PLC0415

    rows = regression_name(loss)  # "mse" of a softmax: it compares rows with one-hot labels
    return (f"{model_path} {file_loss_said(loss)}; dkm-tf compress {verb} the cross-entropy of "
            "the model's output (class-id labels) instead: to keep that loss, call "
            "dkm_tf.compress(model, " + ("(x, one-hot y), " if rows else "") + "...) in Python "
            "on the model " + ("dkm_tf.load_model gives (it carries it)" if isinstance(
                loss, CarriedName) else "compiled with it") + (
            " (that loss compares the output rows with one-hot training labels; held-out "
            "labels stay class ids)" if rows else ""))


def _unused_settings(model_path):
    """The settings of the (one) cross-entropy ``model_path`` was compiled with (or, a saved
    ``share_weights`` copy, carries) that the default cross-entropy lacks
    (``"label_smoothing=0.1"``, ``ignore_class``, a reduction other than the mean, another
    ``axis``), as ``name=value`` strings; [] when none. ``reduction="mean"`` is the default's
    mean over the batch where there are no sample weights: not one of them."""
    from dkm_tf.core.loss_kind import FILE_KEY  # noqa: PLC0415
    from dkm_tf.core.model_configs import read_configs  # noqa: PLC0415

    try:
        config, compiled = read_configs(model_path)
    except Exception:  # noqa: BLE001 (an unreadable file: its load said why)
        return []
    loss = compiled.get("loss") if isinstance(compiled, dict) else None
    built = config.get("build_config") if isinstance(config, dict) else None
    if loss is None and isinstance(built, dict):  # a saved copy's carried loss
        loss = built.get(FILE_KEY)
    config = loss.get("config") if isinstance(loss, dict) else None
    if not isinstance(config, dict):
        return []
    unused = {"label_smoothing": lambda v: v not in (None, 0, 0.0),
              "ignore_class": lambda v: v is not None, "axis": lambda v: v not in (None, -1),
              "reduction": lambda v: v not in (None, "auto", "sum_over_batch_size", "mean")}
    return [f"{k}={config[k]!r}" for k, odd in unused.items() if k in config and odd(config[k])]


def _class_rows(model, train):
    """Whether ``model``'s outputs on ``train``'s inputs are rows of (log-)probabilities."""
    from dkm_tf.pipeline_metrics import _probability_rows  # noqa: PLC0415

    return model is not None and train is not None and _probability_rows(model, (train,))


def _values(model):
    """The number of values per sample of ``model``'s one output (None: not fixed)."""
    shape = getattr(model, "output_shape", None)
    dims = shape[1:] if isinstance(shape, tuple) and shape else (None,)
    return None if any(not isinstance(d, int) for d in dims) else math.prod(dims)


def train_loss(model, model_path, method, train=None, default=False):
    """Give ``model`` (``--model model_path`` loaded with ``compile=False``) the loss the file
    was compiled with, or that a saved ``share_weights`` / ``strip_clustering`` copy carries,
    when ``method`` trains (not ``"wr"``) and that loss makes it a regressor (``"mse"``,
    Huber, ...: :func:`dkm_tf.core.loss_kind.non_class_loss`), so that ``dkm-tf compress``
    trains it as ``dkm_tf.compress`` does: with that loss, its ``loss_weights`` and metrics
    (a compiled file: compiled with its compile config; a copy: the loss and settings it
    carries put back, as ``dkm_tf.load_model`` does). It trained with the cross-entropy of
    the output instead: a one-unit "mse" regressor (tests/test_clitrain26.py: 0/1 targets,
    K=4, 20 fine-tune epochs) went from held-out mse 0.275 to 0.285; now 0.259, as the
    Python API. ``--dataset`` labels are one number per sample: a regressor of several
    output values per sample (mse of rows of 3 crashed after the k-means step; of 64 units
    at batch 64 trained broadcast, silently wrong) and a multi-label file (a binary
    cross-entropy over several units) are refused for ``method`` (a ``CliUsageError``, with
    ``default``: the method was the default), as is a loss that does not load here
    (``--model``), before any work. Outputs on ``train``'s inputs (``(x, y)``) that are rows
    of (log-)probabilities (a ``log_softmax`` compiled with "mse") are class scores: trained
    with the cross-entropy and noted (:func:`loss_note`), as a softmax output is. Returns
    the notes (a metric not known here is left out and named). A one-unit custom or
    ``Lambda`` last layer compiled with a binary cross-entropy is compiled with it, its
    ``from_logits`` included, whatever ``method`` (:func:`dkm_tf.cli_unit.compile_unit_loss`:
    it gives the threshold of its accuracy too)."""
    from dkm_tf.cli_args import CliUsageError  # noqa: PLC0415
    from dkm_tf.cli_unit import compile_unit_loss  # noqa: PLC0415

    if compile_unit_loss(model, model_path):  # read as dkm_tf.compress reads it compiled
        return []
    from dkm_tf.core.custom_code import compiled_loss_name  # noqa: PLC0415
    from dkm_tf.core.loss_kind import CarriedName, non_class_loss  # noqa: PLC0415

    loss = compiled_loss_name(model_path)
    kind = loss and non_class_loss(model, loss)
    if method == "wr" or not kind or kind[1] == "a regressor" and _values(model) != 1 and (
            _class_rows(model, train)):  # class scores: the cross-entropy and a note
        return []
    values = _values(model)
    if kind[1] != "a regressor" or values != 1:
        which, one, rows = (kind[1], "class id", "the 0/1 rows") if kind[1] != (
            "a regressor") else (f"a regressor of {values or 'several'} output values per "
                                 "sample", "number", f"the rows of {values or 'several'} values")
        error = CliUsageError("method", f"wr for --model {model_path!r}, which is {which} by "
                              f"its loss {str(loss)!r} (--dataset labels are one {one} per "
                              f"sample, not {rows} it trains on; call dkm_tf.compress in "
                              "Python with them)", method)
        if default:
            error.args = (f"{error.args[0]} (the default with a labelled --dataset)",)
        raise error
    from dkm_tf.core.loss_kind import restore_source_loss  # noqa: PLC0415
    from dkm_tf.core.model_configs import read_configs  # noqa: PLC0415

    config, compile_config = read_configs(model_path)
    dropped = []
    try:
        why = restore_source_loss(model, config, None, dropped) if isinstance(
            loss, CarriedName) else (
            _compile_as_file(model, compile_config, dropped))
    except Exception as e:  # noqa: BLE001 (a custom loss not known here, ...)
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    if why is not None:
        raise CliUsageError("model", f"a file whose loss {str(loss)!r} loads here (dkm-tf "
                            f"compress trains it with it; {why}): {REMEDY}", model_path)
    return [f"the metric(s) {', '.join(dropped)} of {model_path} are not known here (custom "
            "code: pass --custom_objects); trained and reported without them"] * bool(dropped) + (
        unsaved_settings_notes(model, model_path))


# a loss's setting that Keras 3.15's get_config leaves out (so no saved file says it)
UNSAVED = {"Huber": ("delta", 1.0), "CosineSimilarity": ("axis", -1)}


def unsaved_settings_notes(model, model_path):
    """Notes for the losses ``model`` was just compiled with from ``model_path``'s config
    whose setting Keras does not save (``Huber``'s ``delta``: a model compiled with
    ``Huber(delta=0.25)`` loads back with 1.0, loss 1.5 instead of 0.469 for a prediction 2.0
    of target 0), so that ``dkm-tf compress`` trains with Keras' default, whatever the model
    was compiled with; none where the saved config holds it (a later Keras)."""
    import keras  # noqa: PLC0415

    notes = []
    for loss in keras.tree.flatten(getattr(model, "loss", None)):
        name = type(loss).__name__
        if name in UNSAVED and isinstance(loss, getattr(keras.losses, name)) and (
                UNSAVED[name][0] not in loss.get_config()):
            setting, value = UNSAVED[name]
            notes.append(f"{model_path} was compiled with {name}, whose {setting} Keras "
                         f"{keras.__version__} does not save: dkm-tf compress trains it with "
                         f"{setting}={value!r} (Keras' default), whatever {setting} it was "
                         f"compiled with; to train with another {setting}, call "
                         f"dkm_tf.compress in Python on the model compiled with "
                         f"keras.losses.{name}({setting}=...)")
    return list(dict.fromkeys(notes))  # one loss per output: one note


def _compile_as_file(model, config, dropped):
    """Compile ``model`` with the loss, ``loss_weights`` and metrics of ``config`` (a
    ``.keras`` file's compile config, or an ``.h5`` file's training config, whose
    ``optimizer_config`` ``compile_from_config`` refused) and its optimizer where Keras
    rebuilds it (the training makes its own: only the returned model's rate reads it). A
    metric Keras cannot rebuild here is left out, its name appended to ``dropped``."""
    import keras  # noqa: PLC0415

    from dkm_tf.core.loss_kind import _each, dropped_name  # noqa: PLC0415

    def loaded(value, get):  # an .h5 file's Keras object is a dict without "module"
        if isinstance(value, str):  # (keras.losses.MeanSquaredError(): it failed to load)
            return value
        try:
            return keras.saving.deserialize_keras_object(value)
        except Exception:
            if isinstance(value, dict) and "module" not in value:
                return get(value)  # a built-in's legacy form; a custom one still fails
            raise

    def metric(value):  # one of a nested list / dict of them (`loss_kind._each` walks it)
        try:
            return loaded(value, keras.metrics.get)
        except Exception:  # noqa: BLE001 (an unregistered custom metric)
            dropped.append(dropped_name(value))
            return None

    def losses(value):  # a loss per output (a dict or list of them), or one
        if isinstance(value, (list, tuple)):
            return [losses(v) for v in value]
        if isinstance(value, dict) and "class_name" not in value:
            return {k: losses(v) for k, v in value.items()}
        return None if value is None else loaded(value, keras.losses.get)

    try:
        optimizer = keras.optimizers.get(config.get("optimizer") or config["optimizer_config"])
    except Exception:  # noqa: BLE001 (a custom or missing optimizer: Keras' default)
        optimizer = "rmsprop"
    loss, weights = (config.get(k) for k in ("loss", "loss_weights"))
    model.compile(optimizer=optimizer, loss=losses(loss), loss_weights=weights, **{
        k: None if config.get(k) is None else _each(config[k], metric) for k in (
            "metrics", "weighted_metrics")})
