"""Graphs inside a layer call the Keras reader walks as nested models (Keras is passed in).

A `TimeDistributed` of a Functional or Sequential model: the converter unrolls it into one
copy of the model's ops per step (as it does a TimeDistributed conv), each inlined like a
nested model's and reading its own step; before 2026-12-07 the reader listed it as an
"unsupported layer type Functional" and charged nothing (a TimeDistributed Conv1D, then one of
a model of a batch norm and a Conv1D, 3 steps: Keras / file hierarchy 0.2272, paper 0.6726).
Its model is walked once per step (`keras_reader._walk`), at the shapes of its own graph, its
records named as those of a nested model called that many times (`c`, `c#2`, ...), with no
outer context: the first op of a step reads the UNPACK of the steps, into which nothing folds.
"""


def wrapped_graph(layer, name, call, used, keras, walk, skipped):
    """Reads a call of `layer` (named `name`) holding a graph, returns whether it did.

    Args:
        layer: The called operation.
        name: Its record name (`name#2` for a second call).
        call: `(inputs, outputs)` of the call, or the exception saying it has none.
        used: The walks of each layer name so far (`keras_reader._walk`).
        keras: The keras module.
        walk: `walk(model, used)` appends the records of a nested `model`'s graph.
        skipped: The `(name, reason)` list to add to.

    Returns:
        True where `layer` is a `TimeDistributed` of a model with a graph, read here.
    """
    inner = getattr(layer, "layer", None)
    if not isinstance(layer, keras.layers.TimeDistributed) or isinstance(call, Exception) \
            or not isinstance(inner, keras.Model) or not has_inputs(inner):
        return False
    got = tuple(call[0][0].shape)
    own = tuple(keras.tree.flatten(inner.inputs)[0].shape)
    if len(got) < 2 or got[1] is None:
        skipped.append((name, f"TimeDistributed model called with an unknown number of steps "
                        f"(input shape {got}): not charged"))
        return True
    if own[1:] != got[2:]:
        skipped.append((name, f"TimeDistributed model called with step shape {got[2:]}: read "
                        f"at the shapes of its own graph, {own[1:]}"))
    for _ in range(got[1]):
        walk(inner, used)
    return True


def has_inputs(model):
    """Whether `model` has a graph with inputs (a Functional or built Sequential model)."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False
