"""Whether the outputs of a model whose last activation cannot be read from the op that made
them (a custom or ``Lambda`` last layer) are probabilities, read from its outputs on a few
training inputs (:func:`read_activation`, for
:func:`~dkm_tf.training.common.default_loss`): rows of a softmax, or one unit of a sigmoid;
and where a one-unit output turns to class 1 (:func:`unit_threshold`, for the accuracy of
:func:`dkm_tf.compress`).
"""

from __future__ import annotations

__all__ = ["OPAQUE", "SCALES", "before_noise", "contradiction", "read_activation",
           "unbounded", "unit_threshold"]

SAMPLES = 32
# the factors the last layer's input is multiplied by to tell a sigmoid (in [0, 1] for any
# input) from logits that happen to lie in [0, 1] on the sampled inputs
SCALES = (-100.0, -10.0, 10.0, 100.0)
OPAQUE = "opaque"  # one unit in [0, 1] from a custom last layer of weighted sublayers: not read


def read_activation(model, x, unit=False):
    """``"softmax"`` where the model's single output on ``x[:32]`` has 2+ columns in [0, 1]
    summing to 1, to the output dtype's tolerance (``sum_tolerance``: a bfloat16 softmax sums
    to 1 +- 0.003), with ``training=False`` and ``training=True`` (logits while training and a
    softmax at inference trained through a second softmax: 0.475 -> 0.278); with ``unit``
    (one output unit), ``"sigmoid"`` where its values are in [0, 1] in both and
    :func:`_bounded_last_layer` holds, ``"opaque"`` where they are but the last layer is a
    custom layer of weighted sublayers, which cannot be opened (taken as logits, noted); else
    ``""`` (taken as logits). A model of several
    outputs is not read (one loss for all: output 1's logits trained as probabilities:
    0.4475 -> 0.24). Read before the Keras dropout / noise layers that end the model."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    try:
        if isinstance(x, dict):
            batch = {k: a[:SAMPLES] for k, a in x.items()}
        else:
            batch = [a[:SAMPLES] for a in x] if isinstance(x, (list, tuple)) else x[:SAMPLES]
        if len(getattr(model, "outputs", None) or [None]) != 1:
            return ""
        model = before_noise(model, keras)  # a hand softmax then Dropout (0.485 -> 0.443)
        outs = [_outputs(model, batch, training, keras) for training in (False, True)]
        if unit:
            if not all(out.size and np.all(out >= 0) and np.all(out <= 1) for _, out in outs):
                return ""
            bounded = _bounded_last_layer(model, batch, keras)
            return "sigmoid" if bounded is True else "opaque" if bounded == OPAQUE else ""
    except Exception:  # noqa: BLE001 - any failure: cannot tell, keep from_logits
        return ""
    return "softmax" if all(
        bool(out.ndim >= 2 and out.shape[-1] > 1 and out.size and np.all(out >= 0)
             and np.all(out <= 1) and np.all(np.abs(out.sum(-1) - 1.0) <= tol))
        for tol, out in outs) else ""


def unit_threshold(model, x=None):
    """Where ``model``'s one output unit turns to class 1, as the training functions read it:
    0.5 for probabilities, 0.0 for logits, None when unknown. From the op that made the output
    (a sigmoid, or a linear layer); for a last layer whose activation cannot be read (a custom
    or ``Lambda`` layer), from the binary cross-entropy the model is compiled with (or that an
    uncompiled copy carries): its ``from_logits``; else from its outputs on ``x[:32]``
    (:func:`read_activation`): 0.5 for a sigmoid. A subclassed model (or one as the last
    layer) whose last sublayer is linear gives 0.0 unless its outputs are in [0, 1] (a hand
    sigmoid in its ``call`` looks so: None). Compiled ``from_logits=True``, one read as a
    sigmoid, or in [0, 1] from a last layer that cannot be opened (every sample on ``x[:32]``
    class 1 at 0), gets None (:func:`contradiction`); so does one compiled
    ``from_logits=False`` whose outputs leave [0, 1] (:func:`unbounded`). Without it,
    ``compress`` gave a one-unit custom sigmoid no accuracy (its training read it as
    probabilities), and a
    subclassed last layer ending in ``1 / (1 + exp(-d(t)))`` the share of class 1 as its
    accuracy (0.48 for 0.96)."""
    from dkm_tf.core.labels import binary_from_logits  # noqa: PLC0415
    from dkm_tf.core.loss_kind import output_activation, source_loss  # noqa: PLC0415

    activation = output_activation(model)
    if activation:
        return {"sigmoid": 0.5, "linear": 0.0}.get(activation)
    logits = binary_from_logits(source_loss(model))
    read = read_activation(model, x, unit=True) if x is not None and logits is not False else ""
    if logits is False and x is not None and unbounded(model, x):
        return None  # compiled as probabilities, but its outputs leave [0, 1]: contradiction
    if logits is not None:  # what it trains with, unless its outputs contradict it: a
        return None if logits and read in ("sigmoid", OPAQUE) else 0.0 if logits else 0.5
    # compiled from_logits=True scored at 0 gave every sample class 1 (review R3); so did an
    # opaque head's hand sigmoid (0.41, the share of class 1, for 0.91 at 0.5: session 31)
    if read == "sigmoid":
        return 0.5
    guessed = output_activation(model, _guess=True) == "linear"  # a subclassed last layer's
    return 0.0 if guessed and read != OPAQUE else None


def contradiction(model, x=None):
    """Why a one-unit ``model`` that :func:`unit_threshold` read on the held-out inputs ``x``
    gave no threshold has none, where it is compiled with (or carries) ``BinaryCrossentropy(
    from_logits=True)``: its outputs read as a sigmoid, which the loss contradicts (scored
    at 0, every sample was class 1), or lie in [0, 1] from a last layer dkm_tf cannot open
    (:data:`OPAQUE`: a sigmoid or logits, all class 1 at 0); or where it is compiled with
    ``BinaryCrossentropy()`` (probabilities) but its outputs on ``x[:32]`` leave [0, 1]
    (:func:`unbounded`: logits scored at 0.5 and fine-tuned as probabilities, silently); else
    None."""
    from dkm_tf.core.labels import binary_from_logits  # noqa: PLC0415
    from dkm_tf.core.loss_kind import source_loss  # noqa: PLC0415

    logits = binary_from_logits(source_loss(model))
    if logits is False and x is not None and unbounded(model, x):
        return ("the model's loss contradicts its output: it is compiled with "
                "BinaryCrossentropy() (probabilities, class 1 above 0.5) but its one output "
                "unit leaves [0, 1] on the first 32 held-out inputs, so neither threshold is "
                "meaningful (and the cross-entropy clips what it trains on): if it outputs "
                "logits, compile it with BinaryCrossentropy(from_logits=True)")
    if not logits:
        return None
    if x is not None and read_activation(model, x, unit=True) == OPAQUE:
        return ("the model's loss may contradict its output: it is compiled with "
                "BinaryCrossentropy(from_logits=True) but its one output unit is in [0, 1] on "
                "the first 32 held-out inputs (all class 1 at the logits' threshold 0) and its "
                "last layer (a custom layer of sublayers with weights, or a subclassed model) "
                "cannot be opened to tell a sigmoid from logits: if it outputs probabilities, "
                "compile it with BinaryCrossentropy()")
    return ("the model's loss contradicts its output: it is compiled with BinaryCrossentropy("
            "from_logits=True) but its one output unit reads as a sigmoid (in [0, 1] on the "
            "first 32 held-out inputs at any scale of its last layer's input), so neither "
            "threshold (0 for logits, 0.5 for probabilities) is meaningful: if it outputs "
            "probabilities, compile it with BinaryCrossentropy()")


def unbounded(model, x):
    """Whether ``model``'s single output on ``x[:32]`` has a value outside [0, 1] (or not
    finite) with ``training=False`` or ``training=True``: not probabilities, whatever its
    compiled loss says. False where it cannot be read."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    try:
        if isinstance(x, dict):
            batch = {k: a[:SAMPLES] for k, a in x.items()}
        else:
            batch = [a[:SAMPLES] for a in x] if isinstance(x, (list, tuple)) else x[:SAMPLES]
        if len(getattr(model, "outputs", None) or [None]) != 1:
            return False
        model = before_noise(model, keras)
        outs = [_outputs(model, batch, training, keras)[1] for training in (False, True)]
    except Exception:  # noqa: BLE001 - any failure: cannot tell, keep the compiled loss
        return False
    return any(out.size and not np.all((out >= 0) & (out <= 1)) for out in outs)


def _outputs(model, batch, training, keras):
    """``(sum tolerance, float64 values)`` of the model's single output on ``batch``."""
    import numpy as np  # noqa: PLC0415

    from dkm_tf.graph.sensitivity_loss import sum_tolerance, to_numpy  # noqa: PLC0415

    try:
        batch = _structured(_inputs(model, keras), batch)
    except (AttributeError, ValueError):  # a subclassed model: no symbolic inputs
        pass
    with keras.StatelessScope():  # a stateful RNN's state, BatchNorm's statistics and seeds
        out = model(batch, training=training)  # are not moved
    if isinstance(out, (list, tuple, dict)):
        if len(out) != 1:
            raise ValueError("several outputs")
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return sum_tolerance(out), to_numpy(out).astype(np.float64)  # in its own dtype


def _bounded_last_layer(model, batch, keras):
    """Whether the tail of the model that made its output, called on the values of the
    tensor it starts from on ``batch`` times each of :data:`SCALES`, gives finite values in
    [0, 1] that differ from those on the unscaled tensor (with ``training=False`` and
    ``True``). The tail is the last layer alone where it has weights (its own input is
    scaled: a bounded ``Activation("tanh")`` before it must not hide its logits; so a learned
    scale after ``Activation("sigmoid")`` is read as logits: the two look alike), else the
    last layer (or op) and the ops before it that have no weights and one tensor input each
    (``1 / (1 + ops.exp(-t))``: divide, add, exp, negative), back to the layer with weights
    (or the input) that feeds them. A last layer that is a model with weights is opened
    (its own tail read so, on the values of its input); a custom last layer whose sublayers
    have weights is not read (:func:`_bounded`). A sigmoid is in [0, 1] for any
    input; logits are not: a custom layer of logits (affine in its input, or any unbounded
    function) whose outputs happen to lie in [0, 1] on the sampled inputs leaves [0, 1] once
    its input is 100 times larger or of the other sign, and one whose input is all zero (or
    that ignores it) gives the same values at every scale. A last layer of several tensor
    inputs is not read (taken as logits); a subclassed model (no graph) cannot be opened."""
    if not getattr(model, "outputs", None):  # a subclassed model: no graph to open
        return _unbounded(model, dict.fromkeys((False, True), batch), keras) if (
            model.weights) else False
    return _bounded(model, dict.fromkeys((False, True), batch), keras, 0)


def _unbounded(model, batches, keras):
    """False where the subclassed ``model`` (no graph to open), called on its float inputs
    ``batches[training]`` times each of :data:`SCALES`, gives a finite value outside [0, 1]
    (no sigmoid: logits; a subclassed logits head whose logits on the first 32 held-out
    inputs lay in [0, 1] got no accuracy, review R3), else :data:`OPAQUE` (a hand sigmoid
    stays in [0, 1]; integer inputs, token ids, are not scaled)."""
    import numpy as np  # noqa: PLC0415

    from dkm_tf.graph.sensitivity_loss import to_numpy  # noqa: PLC0415

    try:
        for training in (False, True):
            leaves = keras.tree.flatten(batches[training])
            if not leaves or not all(keras.backend.is_float_dtype(
                    keras.backend.standardize_dtype(a.dtype)) for a in leaves):
                return OPAQUE
            for c in SCALES:
                with keras.StatelessScope():
                    out = model(keras.tree.map_structure(lambda a, c=c: a * c,
                                                         batches[training]), training=training)
                v = to_numpy(out).astype(np.float64)
                if np.any(np.isfinite(v) & ((v < 0) | (v > 1))):
                    return False
    except Exception:  # noqa: BLE001 - cannot call it so: cannot tell
        return OPAQUE
    return OPAQUE


def _bounded(model, batches, keras, depth):
    """:func:`_bounded_last_layer` of ``model`` whose inputs are ``batches[training]``. A last
    layer that is a model (Functional or Sequential) with weights is opened: its own last
    layer is read on the values of its input (scaling the whole sub-model's input hid a
    bounded op inside it: Dense -> tanh -> a custom Dense of logits in [0, 1] was read as a
    sigmoid, review R11). A custom last layer whose sublayers have weights cannot be opened:
    not read (a bounded sublayer output inside it would hide logits the same way)."""
    import numpy as np  # noqa: PLC0415

    from dkm_tf.graph.sensitivity_loss import to_numpy  # noqa: PLC0415

    chain, tensor = [], model.outputs[0]
    for _ in range(64):
        op, node_index, _ = tensor._keras_history  # noqa: SLF001
        node = op._inbound_nodes[node_index]  # noqa: SLF001
        sources = node.arguments.keras_tensors
        if len(sources) != 1 or chain and (
                getattr(op, "weights", None) or getattr(chain[0][0], "weights", None)):
            break  # the last layer is always in the tail, alone where it has weights
        chain.append((op, node, sources[0]))
        tensor = sources[0]
    if not chain:
        return False
    last, ins = chain[0][0], _inputs(model, keras)
    nested = isinstance(last, keras.Model) and bool(last.weights)
    if nested and depth < 8 and not getattr(last, "outputs", None):  # subclassed: no graph
        feed = keras.Model(ins, chain[-1][2])
        with keras.StatelessScope():
            z = {t: feed(_structured(ins, batches[t]), training=t) for t in (False, True)}
        return _unbounded(last, z, keras)
    if nested and (depth >= 8 or len(getattr(last, "outputs", None) or ()) != 1):
        return OPAQUE  # a subclassed model (no graph), or one of several outputs
    if not nested and getattr(last, "weights", None) and any(
            layer.weights for layer in last._flatten_layers(include_self=False)):  # noqa: SLF001
        return OPAQUE  # a custom layer of weighted sublayers: cannot be opened
    feed, moved, inner = keras.Model(ins, chain[-1][2]), False, {}
    for training in (False, True):
        with keras.StatelessScope():
            z, values = feed(_structured(ins, batches[training]), training=training), []
            if nested:
                inner[training] = z
                continue
            for c in (1.0, *SCALES):
                value = z * c
                for op, node, source in reversed(chain):
                    value = _call(op, node, source, value, training, keras)
                values.append(to_numpy(value).astype(np.float64))
        if not all(np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(v <= 1) for v in values):
            return False
        moved |= any(float(np.max(np.abs(v - values[0]))) > 1e-3 for v in values[1:])
    return _bounded(last, inner, keras, depth + 1) if nested else moved


def _inputs(model, keras):
    return model.inputs[0] if isinstance(model, keras.Sequential) else model.input


def _structured(ins, batch):
    """``batch`` in the structure of the model inputs ``ins``: one array for a model built on
    ``[input]`` as a list of one (Keras warns of a structure mismatch otherwise, an error
    under ``-W error``, which read such a model as logits)."""
    one = isinstance(ins, (list, tuple)) and len(ins) == 1
    return [batch] if one and not isinstance(batch, (list, tuple, dict)) else batch


def _call(op, node, source, value, training, keras):
    """``op`` called as in ``node``, with ``value`` for its tensor input ``source``."""
    args, kwargs = node.arguments.fill_in({id(source): value})
    if isinstance(op, keras.layers.Layer) and getattr(op, "_call_has_training_arg", False):
        kwargs = {**kwargs, "training": training}
    out = op(*args, **kwargs)
    return out[0] if isinstance(out, (list, tuple)) else out


def before_noise(model, keras):
    """``model`` cut before the Keras dropout / noise layers that end it (review R10)."""
    try:
        tensor = model.outputs[0]
        while (k := type(tensor._keras_history[0])).__name__.endswith(("Dropout", "Noise")) and (
                k.__module__.startswith("keras")):  # noqa: SLF001
            layer, node_index, _ = tensor._keras_history  # noqa: SLF001
            tensor = layer._inbound_nodes[node_index].input_tensors[0]  # noqa: SLF001
        return model if tensor is model.outputs[0] else keras.Model(_inputs(model, keras), tensor)
    except (AttributeError, IndexError, TypeError, ValueError):
        return model
