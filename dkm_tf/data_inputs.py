"""A ``.npz`` dataset for a model of several inputs: one array per input, keyed
``x_train.<input name>`` (and ``x_test.<input name>``), checked from the file's headers
(:func:`check_named`), loaded as a dict of arrays keyed by input name, and arranged as the
model was built (a list, a nested list, a dict: :func:`arrange`)."""

from __future__ import annotations

__all__ = ["SPLITS", "arrange", "calibration_set", "check_named", "input_key",
           "model_order", "named_inputs", "sample_count"]

SPLITS = ("x_train", "x_test")


def input_key(split, name):
    """The ``.npz`` key of input ``name`` in ``split`` (``"x_train"`` / ``"x_test"``):
    ``"x_train.<name>"``."""
    return f"{split}.{name}"


def named_inputs(found):
    """``{split: [input names]}`` of the per-input keys among ``found`` (array names), in the
    file's order; empty when the file has none (one input array ``x_train``)."""
    out = {}
    for key in found:
        split, dot, name = key.partition(".")
        if dot and split in SPLITS:
            out.setdefault(split, []).append(name)
    return out


def check_named(path, found, error):
    """The keys of a ``.npz`` of several inputs checked from ``found`` (``{array name: (shape,
    dtype)}``); returns the keys to load (per-input ``x_*`` keys and ``y_*`` labels).
    ``error(expected, received)`` builds the exception raised (naming ``path``)."""
    named = named_inputs(found)
    plain = [s for s in SPLITS if s in found]
    if plain:
        raise error("either one input array (x_train, x_test) or one array per input "
                    "(x_train.<input name>, x_test.<input name>), not both",
                    f"it has {plain} and {[input_key(s, n) for s in named for n in named[s]]}")
    if "x_train" not in named:
        raise error("x_train.<input name> for each input of the model (x_test.<input name> "
                    "for the held-out part)", f"only {sorted(found)}")
    labelled = bool({"y_train", "y_test"} & set(found))
    splits = SPLITS if labelled or "x_test" in named else SPLITS[:1]
    names = named["x_train"]
    keys = [input_key(s, n) for s in splits for n in names]
    keys += ["y_train", "y_test"] if labelled else []
    extra = [input_key("x_test", n) for n in named.get("x_test", ()) if n not in names]
    missing = [k for k in keys if k not in found]
    if missing or extra:
        raise error(f"the arrays {keys} (the same inputs in x_train and x_test"
                    + (", and labels y_train, y_test" if labelled else "") + ")",
                    (f"it lacks {missing}" if missing else "")
                    + ("; " if missing and extra else "")
                    + (f"{extra} name no input of x_train" if extra else ""))
    for split in splits:
        label = f"y_{split[2:]}"  # the labels' count, else the first input's, is the one
        first = label if labelled and found[label][0] else input_key(split, names[0])
        n = found[first][0][0] if found[first][0] else None
        for name in names:
            key = input_key(split, name)
            shape = found[key][0]
            if not shape or shape[0] < 1 or shape[0] != n:
                raise error(f"{key} with the {n} samples of {first} along its first axis",
                            f"shape {shape}")
            if split == "x_test" and shape[1:] != found[input_key("x_train", name)][0][1:]:
                raise error(f"{key} with the shape per sample of x_train.{name}, "
                            f"{found[input_key('x_train', name)][0][1:]}", f"{shape[1:]}")
        ys = found[label][0] if labelled else (n,)
        if not (len(ys) == 1 or (len(ys) == 2 and ys[1] == 1)):
            raise error(f"{label} of shape ({n},): one label per sample", f"shape {ys}")
    return keys


def _model_inputs(model):
    """``(structure, [(name, KerasTensor)])`` of ``model``'s inputs as it was built (names:
    :func:`~dkm_tf.export.io_names.keras_input_names`, the dict key of a model built on a
    dict, else the input layer's name), or ``(None, [])`` for a model whose inputs are not
    known (subclassed, not built)."""
    from dkm_tf.export.io_names import keras_input_names  # noqa: PLC0415

    try:
        inputs = list(model.inputs or ())
    except (AttributeError, TypeError, ValueError):
        return None, []
    struct = getattr(model, "_inputs_struct", None)
    return (struct if struct is not None else inputs), list(zip(keras_input_names(model),
                                                                inputs))


def arrange(model, x, split, error):
    """Inputs ``x`` of ``split`` (``"x_train"`` / ``"x_test"``) as ``model`` takes them: a
    dict ``{input name: array}`` (a ``.npz`` of several inputs) is checked against the
    model's inputs (each present, none extra, each array of the input's shape per sample)
    and arranged in the model's structure (nested lists / dicts as it was built; one input:
    its array). An array ``x`` is returned unchanged. ``error(expected, received)`` builds
    the exception raised."""
    if not isinstance(x, dict):
        return x
    import keras  # noqa: PLC0415

    struct, inputs = _model_inputs(model)
    if not inputs:
        raise error("one input array x_train (x_test) for a model whose inputs are not "
                    "known (subclassed or not built)", f"the arrays "
                    f"{[input_key(split, n) for n in x]}")
    names = [n for n, _ in inputs]
    _check_nested_keys(struct, split, error, set(names))
    want = ", ".join(input_key(split, n) for n in names)
    missing = [input_key(split, n) for n in names if n not in x]
    extra = [input_key(split, n) for n in x if n not in names]
    if missing or extra:
        raise error(f"one array per input of the model ({want})",
                    (f"it lacks {missing}" if missing else "")
                    + ("; " if missing and extra else "")
                    + (f"{extra} name no input of the model" if extra else ""))
    for name, t in inputs:
        shape, got = tuple(t.shape)[1:], tuple(x[name].shape)
        if len(shape) != len(got) - 1 or any(w is not None and w != g
                                             for w, g in zip(shape, got[1:])):
            dims = ", ".join("None" if d is None else str(d) for d in shape)
            raise error(f"{input_key(split, name)} of shape (samples, {dims}) (the model's "
                        f"input {name})", f"shape {got}")
    if len(inputs) == 1:
        return x[names[0]]
    by_id = {id(t): x[n] for n, t in inputs}
    return keras.tree.map_structure(lambda t: by_id[id(t)], struct)


def _check_nested_keys(struct, split, error, names, top=True):
    """Refuses a model built on a dict inside a list / dict whose key is the name of another
    input than the one it holds: ``x_train.<name>`` names a nested input by its layer's name (a
    key names only a top-level input), so keys crossing the names (``[a, {"p": Input(name="q"),
    "q": Input(name="p")}]``) fed each array to the other input (0.479 for 0.729; review 31).
    A key that names no input (``{"k1": Input(name="z")}``) is unambiguous: read by ``z``."""
    items = (struct.items() if isinstance(struct, dict) else enumerate(struct)
             if isinstance(struct, (list, tuple)) else ())
    for key, value in items:
        if isinstance(value, (dict, list, tuple)):
            _check_nested_keys(value, split, error, names, top=False)
            continue
        layer = getattr(getattr(value, "_keras_history", None), "operation", None)
        name = getattr(layer, "name", None)
        if (isinstance(struct, dict) and not top and name is not None and str(key) != name
                and str(key) in names):
            raise error(f"a model whose nested dicts of inputs have no key naming another input "
                        f"({input_key(split, '<input name>')} names a nested input by its "
                        f"layer's name, a key only at the top level; rebuild the model with "
                        f"keys equal to the names)",
                        f"the key {key!r} holds the input {name!r}, not the input {key!r}")


def model_order(model, x):
    """The arrays of inputs ``x`` (several: a list or dict, nested as the model takes them) in
    ``model.inputs`` order: a dict keyed by the model's input names
    (:func:`~dkm_tf.export.io_names.keras_input_names`) by name, whatever the model's
    structure (``keras.tree.flatten`` sorts a dict's keys: ``{"zeta": A, "alpha": B}`` for a
    model of ``[zeta, alpha]`` fed A to alpha); else ``keras.tree.flatten(x)``."""
    import keras  # noqa: PLC0415

    from dkm_tf.export.io_names import keras_input_names  # noqa: PLC0415

    names = keras_input_names(model) if model is not None else []
    if isinstance(x, dict) and len(names) > 1 and sorted(map(str, x)) == sorted(names):
        by_name = {str(k): v for k, v in x.items()}
        return [by_name[n] for n in names]
    return keras.tree.flatten(x)


def calibration_set(train_data, n, seed=0):
    """``n`` samples of ``(x, y)`` drawn without replacement with ``seed`` (all if fewer);
    ``x`` one array or several inputs (a list or dict of arrays, nested as the model takes
    them: the same samples of each; ``np.asarray`` of a list of two inputs was refused, or
    took inputs for samples); ``y`` may be None (unlabelled calibration inputs)."""
    import numpy as np  # noqa: PLC0415

    x, y = train_data
    pick_all = None
    if not hasattr(x, "shape"):
        import keras  # noqa: PLC0415

        pick_all = keras.tree.map_structure
    pick = np.sort(np.random.default_rng(seed).permutation(sample_count(x))[:n])
    xs = np.asarray(x)[pick] if pick_all is None else pick_all(  # an optional input's None
        lambda a: None if a is None else np.asarray(a)[pick], x)
    return xs, None if y is None else np.asarray(y)[pick]


def sample_count(x):
    """Samples in inputs ``x``: one array's length, or the first input's of several (a list
    or dict, nested; ``len`` of a list of two inputs was 2), skipping an optional input given
    None (``len(None)`` was a TypeError)."""
    if hasattr(x, "shape"):
        return len(x)
    import keras  # noqa: PLC0415

    return len(next(a for a in keras.tree.flatten(x) if a is not None))
