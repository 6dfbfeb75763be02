"""The binary cross-entropy a ``dkm-tf compress --model`` file of one output unit from a custom
or ``Lambda`` last layer was compiled with (:func:`compile_unit_loss`): the command line
loads the file with ``compile=False``, and read only its loss name, so such a layer was
trained and scored by dkm_tf's probe of its outputs where ``dkm_tf.compress`` on the compiled
model follows the loss (its ``from_logits``). Read from the file's compile config as JSON:
no custom code is deserialised (a loss of the user's own, even named like Keras', is not
read)."""

from __future__ import annotations

__all__ = ["compile_unit_loss", "file_binary_from_logits", "follows_file"]

_NAMES = {"binary_crossentropy", "BinaryCrossentropy", "binary_focal_crossentropy",
          "BinaryFocalCrossentropy"}


def file_binary_from_logits(model_path):
    """The ``from_logits`` of the one Keras binary (focal) cross-entropy the ``.keras`` /
    ``.h5`` file ``model_path`` was compiled with (or, a saved uncompiled ``share_weights`` /
    ``strip_clustering`` copy, carries): its saved config's (default False) for a loss
    object, False for its name or function (as Keras compiles them); None for any other
    loss, a custom one (a module of the user's), several losses, or none saved."""
    return _from_logits(_saved_loss(model_path)[0])


def _saved_loss(model_path):
    """``(the saved loss config, the model config where it is a copy's carried one)``."""
    from dkm_tf.core.loss_kind import FILE_KEY  # noqa: PLC0415
    from dkm_tf.core.model_configs import read_configs  # noqa: PLC0415

    config, compiled = read_configs(model_path)
    if compiled:  # compiled (a copy compiled before saving: its compiled loss, as load_model)
        return (compiled.get("loss") if isinstance(compiled, dict) else None), None
    built = config.get("build_config") if isinstance(config, dict) else None
    carried = built.get(FILE_KEY) if isinstance(built, dict) else None
    return carried, (config if carried is not None else None)


def _from_logits(loss):
    """:func:`file_binary_from_logits` of a saved loss config ``loss``."""
    if isinstance(loss, (list, tuple)) and len(loss) == 1:  # one output's, as a list
        loss = loss[0]
    elif isinstance(loss, dict) and "class_name" not in loss and len(loss) == 1:  # keyed
        loss = next(iter(loss.values()))
    if isinstance(loss, str):
        return False if loss in _NAMES else None
    if not isinstance(loss, dict):
        return None
    module, name, config = (loss.get(k) for k in ("module", "class_name", "config"))
    if module is not None and not (isinstance(module, str) and (
            module == "keras" or module.startswith(("keras.", "builtins")))):
        return None  # the user's own class or function: not Keras'
    if name == "function":  # a Keras loss function: {"config": "binary_crossentropy"}
        return False if config in _NAMES else None
    if name not in _NAMES or not isinstance(config, dict):
        return None
    value = config.get("from_logits", False)
    return value if isinstance(value, bool) else None


def compile_unit_loss(model, model_path):
    """Compile ``model`` (``--model model_path`` loaded with ``compile=False``) with
    ``BinaryCrossentropy(from_logits=...)`` of the file's compiled binary cross-entropy
    (:func:`file_binary_from_logits`) where its one output unit comes from a layer whose
    activation dkm_tf cannot read (a custom or ``Lambda`` layer, a subclassed model), so that
    ``dkm-tf compress`` trains and scores it as ``dkm_tf.compress`` does the compiled model:
    the loss wins over the probe of its outputs (a threshold of 0 for logits, 0.5 for
    probabilities; none, with a note, for a sigmoid compiled ``from_logits=True``). The
    file's other loss settings (label smoothing, ...) are not kept (``loss_note`` says so);
    its accuracy metric is ``BinaryAccuracy`` at the loss's threshold.
    A known last activation (a ``Dense(1, "sigmoid")``, a linear one) is read from the model,
    not the file, as before. A saved copy's carried one is put back as ``dkm_tf.load_model``
    does (:func:`~dkm_tf.core.loss_kind.restore_source_loss`: carried, not compiled; its CLI
    gave 0.5 where ``compress`` of ``load_model``'s gives none). Returns whether it did."""
    if getattr(model, "compiled", False) or not follows_file(model, model_path):
        return False
    loss, carried = _saved_loss(model_path)
    logits = _from_logits(loss)
    if carried is not None:  # a copy's: carried, as dkm_tf.load_model gives it (its notes)
        from dkm_tf.core.loss_kind import restore_source_loss  # noqa: PLC0415

        return restore_source_loss(model, carried) is None
    import keras  # noqa: PLC0415

    model.compile(optimizer=_optimizer(model_path, keras),
                  loss=keras.losses.BinaryCrossentropy(from_logits=logits),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy",
                                                        threshold=0.0 if logits else 0.5)])
    return True


def follows_file(model, model_path):
    """Whether ``dkm-tf compress`` takes ``model``'s loss (its ``from_logits``) from the file
    ``model_path`` (:func:`compile_unit_loss`): one output of one unit from a layer whose
    activation dkm_tf cannot read, and a Keras binary cross-entropy saved in the file."""
    from dkm_tf.core.loss_kind import output_activation  # noqa: PLC0415

    outputs = getattr(model, "outputs", None) or ()
    shape = getattr(model, "output_shape", None)
    return len(outputs) == 1 and isinstance(shape, tuple) and len(shape) == 2 and (
        shape[1] == 1) and output_activation(model) == "" and (
        file_binary_from_logits(model_path) is not None)


def _optimizer(model_path, keras):
    """The file's optimizer where it is one of Keras' own (its learning rate is what the
    compressed model is compiled with), else Keras' default."""
    from dkm_tf.core.model_configs import read_configs  # noqa: PLC0415

    compiled = read_configs(model_path)[1] or {}
    saved = compiled.get("optimizer") or compiled.get("optimizer_config")
    if isinstance(saved, dict) and str(saved.get("module") or "keras").startswith("keras"):
        try:
            return keras.optimizers.get(saved)
        except Exception:  # noqa: BLE001 (an optimizer Keras cannot rebuild here)
            pass
    return "rmsprop"
