"""Every public callable documents every parameter, in the house format.

The house rule: one flat public API, docstrings with the formula and paper section where there
is one. This test checks the part a machine can check: each public function and class (the
names in ``__all__`` of ``dkm_tf`` and of its public subpackages ``dkm_tf.energy``,
``dkm_tf.export``, ``dkm_tf.data`` and ``dkm_tf.models``; ``core``, ``graph`` and ``training``
define no ``__all__`` and are reached through the flat API), and each public method that users
call on a public class, has a docstring, and that docstring has an entry for every parameter
under a Google-style section (``Args:``, or ``Attributes:`` for record classes), written as in
:func:`dkm_tf.share_weights`: a line ``name: text`` (or ``a, b: text`` for parameters described
together), indented under the section heading. A class is checked on its constructor's
signature against the class docstring plus its ``__init__`` docstring. Methods are checked more
lightly (several modules sit at the 400-line limit that tests/test_architecture.py enforces,
and a method's arguments are usually one or two): a docstring, and each parameter either in an
``Args:`` entry or named in backquotes in the text (double as in reST, or single as the
energy modules write them).
"""

import dataclasses
import importlib
import inspect
import re

PUBLIC_MODULES = ("dkm_tf", "dkm_tf.energy", "dkm_tf.export", "dkm_tf.data", "dkm_tf.models")

SECTIONS = ("Args", "Arguments", "Attributes", "Parameters", "Keyword Args", "Keyword Arguments")
_SECTION = re.compile(r"^(\s*)(" + "|".join(SECTIONS) + r"):\s*$")
_ENTRY = re.compile(r"^\s*((?:\*{0,2}\w+\s*,\s*)*\*{0,2}\w+)\s*(?:\([^)]*\))?:(?:\s|$)")

# Public methods of public classes are checked too: those that dkm_tf defines (on the class
# or a dkm_tf base), except the ones overriding a method of a non-dkm_tf base (Keras' call,
# build, get_config, on_epoch_end, ...), which Keras documents. Properties take no arguments
# and are not checked.

# (public name, parameter): parameters that need no entry, each with the reason in a comment.
# Empty: every public parameter has one. (The exceptions that keep ValueError's constructor,
# ExportVerificationError and TFLiteFormatError, have no Python signature; only their
# docstring is checked.)
ALLOWED = frozenset()


def documented_names(doc):
    """The parameter names that ``doc`` lists under an Args-like section, house format."""
    names = set()
    lines = (doc or "").expandtabs().splitlines()
    i = 0
    while i < len(lines):
        m = _SECTION.match(lines[i])
        i += 1
        if not m:
            continue
        head = len(m.group(1))
        entry_indent = None
        while i < len(lines):
            line = lines[i]
            if line.strip():
                indent = len(line) - len(line.lstrip())
                if indent <= head:
                    break
                if entry_indent is None:
                    entry_indent = indent
                if indent == entry_indent and (e := _ENTRY.match(line)):
                    names.update(n.strip().lstrip("*") for n in e.group(1).split(","))
            i += 1
    return names


def _params(sig):
    return [p.name for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _method_targets(cls):
    foreign = set()
    for base in cls.__mro__[1:]:
        if not base.__module__.startswith("dkm_tf"):
            foreign.update(vars(base))
    out, done = [], set()
    for owner in cls.__mro__:
        if not owner.__module__.startswith("dkm_tf"):
            continue
        for meth, attr in vars(owner).items():
            if meth.startswith("_") or meth in foreign or meth in done:
                continue
            done.add(meth)
            func = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
            if isinstance(func, property) or not inspect.isfunction(func):
                continue
            out.append((f"{cls.__name__}.{meth}", func.__doc__, inspect.signature(func), True))
    return out


def _targets():
    """(qualified name, docstring, signature or None, is a method) per public callable."""
    seen, out = set(), []
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or id(obj) in seen:
                continue
            if inspect.isclass(obj):
                seen.add(id(obj))
                own_init = "__init__" in vars(obj) and not dataclasses.is_dataclass(obj)
                doc = (obj.__doc__ or "") + "\n" + ((obj.__init__.__doc__ or "") if own_init
                                                    else "")
                try:
                    sig = inspect.signature(obj)
                except ValueError:  # a builtin constructor (exceptions): docstring only
                    sig = None
                out.append((name, doc if obj.__doc__ or own_init else None, sig, False))
                out.extend(_method_targets(obj))
            elif callable(obj):
                seen.add(id(obj))
                out.append((name, obj.__doc__, inspect.signature(obj), False))
    return out


def gaps():
    """Human-readable lines, one per missing docstring or undocumented parameter."""
    out = []
    for name, doc, sig, method in _targets():
        if not (doc or "").strip():
            out.append(f"{name}: no docstring")
            continue
        if sig is None:
            continue
        have = documented_names(doc)
        if method:
            have |= set(re.findall(r"`{1,2}\*{0,2}(\w+)`{1,2}", doc))
        missing = [p for p in _params(sig)
                   if p not in have and (name.split(".")[0], p) not in ALLOWED]
        if missing:
            out.append(f"{name}: no entry for {', '.join(missing)}")
    return out


def test_parser_reads_house_format():
    doc = """Summary.

    Args:
        alpha: one.
        beta, gamma: two together,
            continued: not an entry (deeper indent).
        **kwargs: passed on.

    Returns:
        delta: not a parameter section.
    """
    assert documented_names(doc) == {"alpha", "beta", "gamma", "kwargs"}


def test_parser_needs_a_section_and_line_start():
    assert documented_names("Uses alpha: inline, no Args section.") == set()
    doc = """Summary.

    Args:
        alpha: the first; see beta: mentioned mid-line only.
    """
    assert documented_names(doc) == {"alpha"}


def test_checker_reports_an_undocumented_parameter(monkeypatch):
    import dkm_tf  # noqa: PLC0415

    def fake(alpha, beta=1):
        """Summary.

        Args:
            alpha: documented.
        """

    monkeypatch.setattr(dkm_tf, "count_unique", fake)
    assert "count_unique: no entry for beta" in gaps()


def test_every_public_parameter_is_documented():
    found = gaps()
    assert not found, f"{len(found)} public callables with gaps:\n" + "\n".join(found)


def test_methods_may_name_parameters_in_backquotes(monkeypatch):
    import dkm_tf  # noqa: PLC0415

    class Record:
        def index_bits(self, coding="log2", bits=32):
            """Bits of the indices for ``coding``."""

    Record.__module__ = "dkm_tf.core.palette"
    assert [m[0] for m in _method_targets(Record)] == ["Record.index_bits"]
    monkeypatch.setattr(dkm_tf, "Palette", Record)
    assert "Record.index_bits: no entry for bits" in gaps()
