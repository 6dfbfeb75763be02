"""A user's own code that a saved model needs: importing it (``--custom_objects``: ``.py``
files or module names), and naming the custom classes and functions a model file refers to
that are not known here, so a failed load says what to pass.

Keras finds a custom layer, activation, loss, metric, regularizer, constraint or initializer
by the name ``keras.saving.register_keras_serializable`` gave it (``"userpkg>MyDense"``), or
by a ``custom_objects`` dict. Its own error for a missing one is "Functional could not be
deserialized properly", with the name deep inside a page of config; :func:`unknown_names`
finds the names (in the error and in the file's config) and :func:`unknown_code_error` says
which flag or argument brings them in. No Keras at import (it is imported where needed).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import zipfile

from dkm_tf.core.model_configs import config_names as _config_names
from dkm_tf.core.model_configs import config_objects as _config_objects
from dkm_tf.core.model_configs import file_objects as _file_objects
from dkm_tf.core.model_configs import read_configs as _read_configs

__all__ = ["compiled_from_logits", "compiled_loss_name", "import_custom_code",
           "unknown_code_error", "unknown_names"]

_EXPECTED = ("comma-separated Python files (.py) or importable module names that define (and "
             "register) the model's custom classes and functions")
# what Keras says of a name it cannot find, in a .keras / .h5 file, for each kind of object
_UNKNOWN_RE = (r"Could not locate (?:class|function) '([^']+)'",
               r"Unknown (?:layer|activation|loss|metric|regularizer|constraint|initializer|"
               r"optimizer|object)s?: '([^']+)'",
               r"Could not interpret \w+ identifier: [^\n]*?'registered_name': '([^']+)'",
               r"Could not interpret \w+ identifier: \{'module': '[^']*', 'class_name': "
               r"'([^']+)'")
_DESERIALIZING = ("|".join(_UNKNOWN_RE) + r"|could not be deserialized|Error when deserializing"
                  r"|Could not interpret")


def import_custom_code(spec, name="custom_objects", path=None):
    """Import every ``.py`` file or module name of ``spec`` (a comma-separated str, or a list
    of str); returns ``{name: object}`` of the classes and functions they define (for a
    ``keras.saving.custom_object_scope``: unregistered ones load too).

    A ``.py`` file is imported as the module named by its stem (its folder on ``sys.path``
    while it runs, so its own ``import`` of a file beside it works; a stem that names an
    importable library gets another name), or under its dotted name when its folder is a
    package (``userpkg/layers.py``: ``userpkg.layers``, its relative imports work); a file
    imported already (under any module name) is reused. Importing registers its
    ``register_keras_serializable`` classes. A missing file or a module that fails to import
    is a ``ValueError`` naming ``name``, the item and the import error's first line; so is a
    class or function name defined in two of the items (which one would win).

    A name that Keras' own lookups know (``relu``, ``Dense``, ``mse``, ...) is left out of
    the returned dict: in a scope it would replace the built-in in the whole model. Only
    where the config of the model file ``path`` names it from a module outside Keras (a
    ``.keras`` file saved with the user's own class ``Dense``) is it kept.
    """
    items = _items(spec, name)
    found, origin, twice = {}, {}, {}
    for item in items:
        module = _import_one(item, name, spec)
        for obj in vars(module).values():
            if ((inspect.isclass(obj) or inspect.isfunction(obj))
                    and getattr(obj, "__module__", None) == module.__name__):
                key = obj.__name__
                if key in found and found[key] is not obj:
                    twice[key] = item
                    continue
                found[key], origin[key] = obj, item
    if not found:
        return found
    used = _config_names(path) if path else None  # the objects the file's configs name
    for key, item in twice.items():  # a name the model may use, from two files: refused
        if used is None or _names(used, key, found[key]):
            raise _fail(name, spec, item, f"defines {key!r}, which {origin[key]!r} defines "
                        "too (which one the model would get is not clear): rename one, or "
                        "pass only the file the model needs")
        found.pop(key)  # the model names it nowhere: left out
    if path and not zipfile.is_zipfile(os.fspath(path)):  # .h5: configs say no module
        both = sorted(k for k in found if _keras_knows(k) and _names(used or {}, k, found[k]))
        if both:
            raise _fail(name, spec, origin[both[0]], f"defines {both[0]!r}, which Keras has "
                        "too, and the .h5 model file names it without saying whose: re-save "
                        "the model as .keras (its config names the module), or rename yours")
    needed = {n.split(">")[-1] for n, m in _file_objects(path) if m} if path else set()
    return {k: v for k, v in found.items() if k in needed or not _keras_knows(k)}


def _names(used, key, obj):
    """Whether the configs (`model_configs.config_names`) name ``key`` as what ``obj`` is: a
    class, or a function that fits where it is named (an activation takes one argument)."""
    kinds = used.get(key, set())
    if inspect.isclass(obj):
        return "class" in kinds
    try:
        required = [p for p in inspect.signature(obj).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                            p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        required = []
    return ("activation" in kinds and len(required) <= 1) or (
        "function" in kinds and len(required) <= 2)  # (x), or a loss's (y_true, y_pred)


def _keras_knows(key):
    """Whether Keras' own lookups (layers, activations, losses, ...) know the name ``key``."""
    import keras  # noqa: PLC0415

    modules = (keras.layers, keras.activations, keras.losses, keras.metrics,
               keras.initializers, keras.regularizers, keras.constraints, keras.optimizers,
               keras.models)
    return key in ("Functional", "Sequential", "Model") or any(
        hasattr(m, key) for m in modules)


def _items(spec, name):
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else spec
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, (str, os.PathLike))
                                                       for p in parts):
        raise TypeError(f"Invalid type for argument `{name}`. Expected {_EXPECTED}: a str or a "
                        f"list of str. Received: {name}={spec!r}")
    items = [os.fspath(p).strip() for p in parts]
    if not all(items):
        raise ValueError(f"Invalid value for argument `{name}`. Expected {_EXPECTED}, none "
                         f"empty. Received: {name}={spec!r}")
    return items


def _fail(name, spec, item, why):
    error = ValueError(f"Invalid value for argument `{name}`. Expected {_EXPECTED}. Received: "
                       f"{name}={spec!r}: {item!r} {why}")
    error.item, error.why = item, why  # for the command line's one line
    return error


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _import_one(item, name, spec):
    """The module of one item: a ``.py`` path or a dotted module name."""
    if not item.lower().endswith(".py"):
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", item):
            raise _fail(name, spec, item, "is neither a .py file nor a module name")
        cwd = os.getcwd()
        added = cwd not in sys.path and "" not in sys.path  # the console script: not on it
        if added:  # a package in the current folder, as `python -m` finds it
            sys.path.append(cwd)
        try:
            return importlib.import_module(item)
        except BaseException as e:  # noqa: BLE001 - SystemExit, an error of the user's code
            if isinstance(e, KeyboardInterrupt):
                raise
            why = ("could not be imported (no .py file or module of that name)"
                   if isinstance(e, ModuleNotFoundError) and e.name == item.split(".")[0]
                   else f"failed to import ({_first_line(e)})")
            raise _fail(name, spec, item, why) from e
        finally:
            if added and cwd in sys.path:
                sys.path.remove(cwd)
    path = os.path.expanduser(item)
    if not os.path.isfile(path):
        raise _fail(name, spec, item, "is not an existing file" if not os.path.isdir(path)
                    else "is a folder, not a .py file")
    real = os.path.realpath(path)
    for module in list(sys.modules.values()):  # imported already, under any name: reuse it
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.basename(file) == os.path.basename(real) and \
                os.path.realpath(file) == real:
            return module
    stem = os.path.splitext(os.path.basename(path))[0]
    packaged = _import_packaged(path, stem, name, spec, item)
    if packaged is not None:
        return packaged
    mod_name = stem if stem.isidentifier() else "dkm_tf_user_" + re.sub(r"\W", "_", stem)
    old = sys.modules.get(mod_name)
    if old is not None or _importable_elsewhere(mod_name, real):  # a file named keras.py, tqdm.py:
        mod_name, old = "dkm_tf_user_" + mod_name, None  # the library keeps its name
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.modules[mod_name] = module
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - any error of the user's file, SystemExit too
        if old is None:
            sys.modules.pop(mod_name, None)
        else:
            sys.modules[mod_name] = old
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _fail(name, spec, item, f"failed to import ({_first_line(e)})") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _importable_elsewhere(mod_name, real):
    """Whether ``mod_name`` is a library importable from ``sys.path`` (not imported yet) that
    is not at ``real`` (the user's file, or package folder)."""
    try:
        found = importlib.util.find_spec(mod_name)
    except (ImportError, ValueError):
        return True
    if found is None:
        return False
    places = [found.origin or ""] + list(found.submodule_search_locations or ())
    return all(os.path.realpath(p) != real for p in places if p)


def _import_packaged(path, stem, name, spec, item):
    """The module of a ``.py`` file inside a package folder (``__init__.py``), imported under
    its dotted name (so its relative imports work), or None: not in a package, or the
    package name is another package's (imported or importable)."""
    parts, folder = [], os.path.dirname(os.path.abspath(path))
    while os.path.isfile(os.path.join(folder, "__init__.py")) and \
            os.path.basename(folder).isidentifier():
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    if not parts or not stem.isidentifier():
        return None
    top = os.path.realpath(os.path.join(folder, parts[0]))
    held = sys.modules.get(parts[0])
    if held is not None:
        if all(os.path.realpath(p) != top for p in getattr(held, "__path__", ())):
            return None
    elif _importable_elsewhere(parts[0], top):
        return None
    dotted = ".".join(parts + ([] if stem == "__init__" else [stem]))
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(dotted)
    except BaseException as e:  # noqa: BLE001 - any error of the user's file, SystemExit too
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _fail(name, spec, item, f"failed to import as {dotted} "
                                      f"({_first_line(e)})") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def unknown_names(error=None, path=None, compiled=True, custom_objects=None):
    """``{name: module or None}``: the custom classes and functions a failed load could not
    find, from the text of ``error`` (and the errors it came from) and, for a ``.keras`` /
    ``.h5`` file ``path``, from its config (every object of a module outside Keras whose
    name Keras does not know here: neither registered, nor in a custom object scope, nor in
    the load's ``custom_objects`` dict; its compile config's too unless ``compiled`` is
    False: a ``compile=False`` load)."""
    found = []
    if path is not None:
        for config in _read_configs(path)[:2 if compiled else 1]:
            _config_objects(config, found)
    names = {}
    for link in _chain(error):
        for pattern in _UNKNOWN_RE:
            for match in re.findall(pattern, str(link)):
                names.setdefault(match, None)
    if not found and not names:
        return names
    import keras  # noqa: PLC0415

    given = custom_objects if isinstance(custom_objects, dict) else {}

    def known(n):
        return any(k in given or keras.saving.get_registered_object(k, given) is not None
                   for k in (n, n.split(">")[-1]))

    for name, module in found:
        if not known(name):
            names[name] = module or names.get(name)
    return {n: m for n, m in names.items()  # 'MyReg' when 'userpkg>MyReg' is named too
            if not known(n) and (">" in n or not any(o.endswith(">" + n) for o in names))}


def _chain(error):
    """``error`` and the errors it was raised from (``__cause__`` / ``__context__``)."""
    chain = []
    while error is not None and all(error is not e for e in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def describe(names):
    """``'userpkg>MyDense' (module userpkg_mod), 'plain_act'``: the names for a message."""
    return ", ".join(repr(n) + (f" (module {m})" if m else "") for n, m in names.items())


def unknown_code_error(error, path, where, remedy, compiled=True, kind=ValueError,
                       custom_objects=None):
    """A ``kind`` error for a model ``path`` that failed to load (``error``) because it names
    custom code not known here, or None when ``error`` is not a Keras deserialization error
    (a bad file, ...: the names in the file's config are not its cause). ``where`` leads the
    message ("Could not load --model 'm.keras'"); ``remedy`` says how to bring the code in;
    ``compiled``: whether the load restored the compile config (loss, metrics);
    ``custom_objects``: the load's own dict (its names are known)."""
    if not any(re.search(_DESERIALIZING, str(e)) for e in _chain(error)):
        return None
    names = unknown_names(error, path, compiled, custom_objects)
    if not names:
        return None
    main = any(m == "__main__" for m in names.values())
    return kind(
        f"{where}: it uses custom code not known here: {describe(names)}"
        + (" ('__main__': the script that saved the model; move its definitions into a .py "
           "file)" if main else "") + f". {remedy} (Keras: {_keras_words(error)})")


def _keras_words(error):
    """The innermost line of Keras' nested "Exception encountered:" message, shortened."""
    error = _chain(error)[-1]  # Keras' own, under the messages that wrap it
    text = str(error).rsplit("Exception encountered: ", 1)[-1].strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {line if len(line) <= 120 else line[:117] + '...'}"


def compiled_loss_name(path):
    """The loss a ``.keras`` / ``.h5`` file was compiled with, as saved (``"mse"``,
    ``"userpkg>my_loss"``, ``"SparseCategoricalCrossentropy"``), or None (not compiled, no
    loss, several losses are joined with ", "). An uncompiled ``share_weights`` /
    ``strip_clustering`` copy's file gives the loss of the model it was copied from, saved
    in its build config (:func:`dkm_tf.core.loss_kind.keep_source_loss`), as a
    :class:`~dkm_tf.core.loss_kind.CarriedName` (notes do not call it compiled); a copy the
    user compiled before saving gives its compiled loss, None if compiled without one, as
    ``dkm_tf.load_model`` of it trains with (the carried one was given before)."""
    model_config, config = _read_configs(path)
    loss = config.get("loss") if isinstance(config, dict) else None
    if not config and isinstance(model_config, dict):  # not compiled ({}): a copy's carried
        from dkm_tf.core.loss_kind import FILE_KEY, CarriedName  # noqa: PLC0415

        built = model_config.get("build_config")
        name = _loss_name(built.get(FILE_KEY) if isinstance(built, dict) else None)
        return None if name is None else CarriedName(name)  # notes: "of the model it was
    return _loss_name(loss)  # copied from", not "compiled with"


def compiled_from_logits(path):
    """The ``from_logits`` of the (one) loss a ``.keras`` / ``.h5`` file was compiled with, or
    None (not saved, a loss function, several losses)."""
    config = _read_configs(path)[1]
    loss = config.get("loss") if isinstance(config, dict) else None
    value = (loss.get("config") or {}).get("from_logits") if isinstance(loss, dict) and (
        isinstance(loss.get("config"), dict)) else None
    return value if isinstance(value, bool) else None


def _loss_name(loss):
    if loss is None:
        return None
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict) and "class_name" in loss:
        if loss.get("class_name") == "function" and isinstance(loss.get("config"), str):
            return loss["config"]
        return str(loss.get("registered_name") or loss["class_name"])
    values = loss.values() if isinstance(loss, dict) else loss if isinstance(
        loss, (list, tuple)) else [loss]
    return ", ".join(str(_loss_name(v)) for v in values) or None
