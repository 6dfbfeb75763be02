"""Docstring claims that can drift from the code, checked mechanically.

Two kinds of claim a user reads in ``help(dkm_tf.<name>)`` and that nothing else ties to the
code: (1) a default value stated in a parameter's ``Args:`` entry ("(default 32)",
"Default: ``'log2'``", "defaults to 0.5") must equal the signature's default; (2) every Sphinx
cross-reference (``:func:``, ``:class:``, ``:mod:``, ``:meth:``, ``:attr:``, ``:data:``,
``:exc:``) in a public docstring must name something that exists: a dotted path that imports,
a name in the docstring owner's module or class, or a name of the flat ``dkm_tf`` API.
Public means the names in ``__all__`` of ``dkm_tf`` and its public subpackages, and the public
methods and properties of those classes. Each checker is also run on a deliberately wrong
fake, to show that it fails.
"""

import ast
import dataclasses
import importlib
import inspect
import math
import re
import tempfile

PUBLIC_MODULES = ("dkm_tf", "dkm_tf.energy", "dkm_tf.export", "dkm_tf.data", "dkm_tf.models")

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Attributes|Parameters|Keyword Args):\s*$")
_ENTRY = re.compile(r"^\s*((?:\*{0,2}\w+\s*,\s*)*\*{0,2}\w+)\s*(?:\([^)]*\))?:(?:\s|$)")
# "(default 32)", "(default: 'x')", "Default: ``None``", "defaults to 0.5", "default is 1e-4"
_DEFAULT = re.compile(
    r"(?:\(\s*default[:=]?\s+|\bDefault:\s+|\bdefaults? to\s+|\bdefault is\s+)"
    r"(``?[^`]+``?|[-+\w.'\"]+?)(?=[.;,]?(?:\s*[);,]|\s*$|\.\s))", re.IGNORECASE)
# '"add" (default)': the quoted value just before the marker is the default
_MARKED = re.compile(r"(``[^`]+``|\"[^\"]+\"|'[^']+'|`[^`]+`)\s*\(default\)")
# '``latent=False`` (default)' anywhere in the text
_ASSIGNED = re.compile(r"``(\w+)=([^`]+)``\s*\(default\b")
_XREF = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?!?([^`]+)`")
_MISSING = object()


def _targets():
    """(qualified name, docstring, function or class or None, owner module, owner class),
    for each public module, function, class, method and property."""
    seen, out = set(), []
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        out.append((mod_name, mod.__doc__, None, mod, None))  # help(dkm_tf.energy) too
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or id(obj) in seen or not callable(obj):
                continue
            seen.add(id(obj))
            owner_mod = inspect.getmodule(obj)
            if not inspect.isclass(obj):
                out.append((name, obj.__doc__, obj, owner_mod, None))
                continue
            doc = obj.__doc__ or ""
            if "__init__" in vars(obj) and not dataclasses.is_dataclass(obj):
                doc += "\n" + (obj.__init__.__doc__ or "")
            out.append((name, doc, obj, owner_mod, obj))
            for base in obj.__mro__:
                if not base.__module__.startswith("dkm_tf"):
                    continue
                for meth, attr in vars(base).items():
                    if meth.startswith("_"):
                        continue
                    func = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
                    if isinstance(func, property):
                        out.append((f"{name}.{meth}", func.fget.__doc__, None, owner_mod, obj))
                    elif inspect.isfunction(func):
                        out.append((f"{name}.{meth}", func.__doc__, func, owner_mod, obj))
    return out


def entries(doc):
    """{(parameter names of one entry): its text} for the Args-like sections of ``doc``."""
    out, lines, i = {}, (doc or "").expandtabs().splitlines(), 0
    while i < len(lines):
        m = _SECTION.match(lines[i])
        i += 1
        if not m:
            continue
        head, indent0, current = len(m.group(1)), None, None
        while i < len(lines):
            line = lines[i]
            if line.strip():
                indent = len(line) - len(line.lstrip())
                if indent <= head:
                    break
                indent0 = indent if indent0 is None else indent0
                e = _ENTRY.match(line) if indent == indent0 else None
                if e:
                    current = tuple(n.strip().lstrip("*") for n in e.group(1).split(","))
                    out[current] = line[e.end():]
                elif current:
                    out[current] += " " + line.strip()
            i += 1
    return out


def _literal(text):
    text = text.strip("`")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _MISSING


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-12))
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def default_mismatches(name, doc, func):
    """Lines naming each parameter whose docstring-stated literal default differs."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    out = []
    for names, text in entries(doc).items():
        stated_all = list(_DEFAULT.finditer(text))
        if len(names) > 1 and len(stated_all) != len(names):
            continue  # "a, b: ..." entries pair their defaults in order, or are not checked
        for i, m in enumerate(stated_all):
            param = names[i] if len(names) > 1 else names[0]
            p = sig.parameters.get(param)
            if p is None or p.default is inspect.Parameter.empty:
                continue
            stated = _literal(m.group(1).rstrip(".;,"))
            if stated is not _MISSING and not _same(stated, p.default):
                out.append(f"{name}({param}): docstring says default {m.group(1)!s}, "
                           f"signature has {p.default!r}")
        p = sig.parameters.get(names[0]) if len(names) == 1 else None
        for m in _MARKED.finditer(text) if p is not None else ():
            stated = m.group(1).strip("`")
            stated = stated if _literal(stated) is _MISSING else _literal(stated)
            if p.default is not inspect.Parameter.empty and stated != p.default:
                out.append(f"{name}({names[0]}): docstring marks {m.group(1)} as the default, "
                           f"signature has {p.default!r}")
    for m in _ASSIGNED.finditer(doc or ""):
        p, stated = sig.parameters.get(m.group(1)), _literal(m.group(2))
        if (p is not None and p.default is not inspect.Parameter.empty
                and stated is not _MISSING and not _same(stated, p.default)):
            out.append(f"{name}({m.group(1)}): docstring says {m.group(0)}, "
                       f"signature has {p.default!r}")
    return out


def _resolves(target, module, cls):
    target = target.split("<")[-1].rstrip(">").strip().removesuffix("()")
    parts = target.split(".")
    roots = [module, importlib.import_module("dkm_tf")]
    if cls is not None:
        roots.insert(0, cls)
    if cls is not None and dataclasses.is_dataclass(cls) and target in {
            f.name for f in dataclasses.fields(cls)}:
        return True  # a field without a default is no class attribute
    for root in roots:  # a name in the owner's class, module, or the flat API
        obj = root
        for part in parts:
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                break
        else:
            return True
    for cut in range(len(parts), 0, -1):  # an importable dotted path, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except (ImportError, TypeError, ValueError):
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                return False
        return True
    return False


def dangling_references(name, doc, module, cls):
    """Lines naming each cross-reference in ``doc`` that resolves to nothing."""
    return [f"{name}: {m.group(0)} names nothing" for m in _XREF.finditer(doc or "")
            if not _resolves(m.group(1), module, cls)]


def default_gaps():
    out = []
    for name, doc, func, _, _ in _targets():
        if func is not None:
            out += default_mismatches(name, doc, func)
    return out


def reference_gaps():
    out = []
    for name, doc, _, module, cls in _targets():
        out += dangling_references(name, doc, module, cls)
    return out


def test_stated_defaults_match_signatures():
    found = default_gaps()
    assert not found, "\n".join(found)


def test_cross_references_resolve():
    found = reference_gaps()
    assert not found, "\n".join(found)


def test_default_checker_fails_on_a_wrong_docstring():
    def fake(bits=8, coding="log2", lr=1e-4, flag=False, other="b"):
        """Summary; with ``flag=True`` (default) it flags.

        Args:
            bits: index bits (default 4).
            coding: how indices are coded. Default: ``'huffman'``.
            lr: the rate; defaults to 1e-3.
            flag: a flag (default ``0``).
            other: ``"a"`` (default) or ``"b"``.
            kind: free text (default: every weight) is not a literal: not checked.
        """

    found = default_mismatches("fake", fake.__doc__, fake)
    assert len(found) == 6, found
    assert "``flag=True`` (default" in found[-1]
    assert all(p in " ".join(found) for p in ("(bits)", "(coding)", "(lr)", "(flag)", "(other)"))

    def right(bits=8, coding="log2", lr=1e-4, other="a", kind=None):
        """Summary.

        Args:
            bits: index bits (default 8).
            coding: how indices are coded. Default: ``'log2'``.
            lr: the rate; defaults to
                1e-4.
            other: ``"a"`` (default) or ``"b"``.
            kind: which (default: 1e-3 when small, else 1e-4): conditional, not checked.
        """

    assert default_mismatches("right", right.__doc__, right) == []


def test_reference_checker_fails_on_a_dangling_reference():
    import dkm_tf  # noqa: PLC0415

    doc = ("See :func:`dkm_tf.share_weights`, :class:`Palette`, :mod:`dkm_tf.core.codebook`, "
           ":meth:`to_dict`, :func:`dkm_tf.no_such_function` and :class:`NoSuchClass`.")
    found = dangling_references("fake", doc, dkm_tf.core.palette, dkm_tf.Palette)
    assert found == ["fake: :func:`dkm_tf.no_such_function` names nothing",
                     "fake: :class:`NoSuchClass` names nothing"]


def run_examples(name, doc, module):
    """Run the ``>>>`` examples of ``doc`` (``+SKIP`` ones excepted); failures as text."""
    import doctest  # noqa: PLC0415
    import io  # noqa: PLC0415

    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    globs = dict(vars(module), np=np, keras=keras, dkm_tf=dkm_tf)
    test = doctest.DocTestParser().get_doctest(doc, globs, name, None, 0)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=out.write)
    return out.getvalue() if result.failed else ""


def test_public_examples_print_what_they_say():
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    found, ran = [], 0
    for name, doc, _, module, _ in _targets():
        if doc and ">>>" in doc:
            ran += 1
            found.append(run_examples(name, doc, module))
    assert ran >= 10  # ClusterWeights, cluster_values, kernel_flops, energy.estimate, ...
    found = [f for f in found if f]
    assert not found, "\n".join(found)


def test_example_runner_fails_on_a_wrong_output():
    import dkm_tf  # noqa: PLC0415

    doc = dkm_tf.count_unique.__doc__ + """
    Example:
        >>> count_unique(np.array([1.0, 1.0, 2.0]))
        3
    """
    assert "Expected:\n    3\nGot:\n    2" in run_examples("fake", doc, dkm_tf)
    assert run_examples("fake", doc.replace("    3\n", "    2\n"), dkm_tf) == ""


def test_index_bits_docstring_states_the_scaled_kernel_cost():
    """Palette.index_bits / compression_ratio: a scaled, transform-invariant kernel palette
    costs N (log2 (K T) + b_s) index bits (Son et al. §2.5), as the docstrings now say."""
    import numpy as np  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32)
    plain = dkm_tf.cluster_tensor(kernel, kind="conv", n_clusters=4, unit="kernel")
    scaled = dataclasses.replace(plain, scales=np.ones(plain.indices.shape, np.float32),
                                 transforms=np.zeros(plain.indices.shape, np.int32),
                                 n_transforms=2, scale_bits=8)
    n_units, k = scaled.indices.size, scaled.n_clusters
    assert scaled.index_bits("log2") == n_units * (math.log2(k * 2) + 8)
    assert scaled.index_bits("packed") == n_units * (math.ceil(math.log2(k * 2)) + 8)
    assert math.isclose(scaled.compression_ratio(),
                        kernel.size * 32 / (n_units * (math.log2(k * 2) + 8)
                                            + scaled.codebook.size * 32))
    assert "b_s" in dkm_tf.Palette.index_bits.__doc__
    assert "scales included" in dkm_tf.Palette.compression_ratio.__doc__
    assert "G K d b" in dkm_tf.Palette.compression_ratio.__doc__  # per-channel codebooks


def test_to_tflite_example_output():
    """The output printed in ``to_tflite``'s example is what the README's digits CNN at
    K = 4 (``unit="auto"``) gives with the default ``keep_float="auto"``."""
    import numpy as np  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415
    from dkm_tf.export import to_tflite  # noqa: PLC0415

    doc = to_tflite.__doc__
    line = 'round(report.ratio_vs_float, 3), report.tensors[0]["storage"]'
    assert line in doc
    stated = ast.literal_eval(doc.split(line)[1].split("\n")[1].strip())
    model = dkm_tf.models.digits_cnn()
    plain, palettes = dkm_tf.strip_clustering(
        dkm_tf.cluster_weights(model, n_clusters=4, unit="auto"))
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        report = to_tflite(plain, f"{tmp}/m.tflite", "palettized", palettes, x,
                           interpreters=["tflite"])
    assert (round(report.ratio_vs_float, 3), report.tensors[0]["storage"]) == stated


_RAISES = re.compile(r"^(\s*)Raises:\s*$")


def raised_names(doc):
    """The exception names listed in each ``Raises:`` section of ``doc``, in order."""
    out, lines = [], (doc or "").expandtabs().splitlines()
    for i, line in enumerate(lines):
        m = _RAISES.match(line)
        if not m:
            continue
        names, indent0 = [], None
        for entry in lines[i + 1:]:
            if not entry.strip():
                continue
            indent = len(entry) - len(entry.lstrip())
            if indent <= len(m.group(1)):
                break
            indent0 = indent if indent0 is None else indent0
            if indent == indent0 and (e := re.match(r"\s*([\w.]+):", entry)):
                names.append(e.group(1))
        out.append(names)
    return out


def test_no_exception_is_listed_twice_in_one_raises_section():
    found = [f"{name}: {names}" for name, doc, _, _, _ in _targets()
             for names in raised_names(doc) if len(names) != len(set(names))]
    assert not found, "\n".join(found)
    fake = """Summary.

    Raises:
        TypeError: bad data,
            continued.
        ValueError: bad value.
        TypeError: a subclassed model.
    """
    assert raised_names(fake) == [["TypeError", "ValueError", "TypeError"]]


def test_fold_batch_norm_returns_names_every_field():
    import dkm_tf  # noqa: PLC0415
    from dkm_tf.graph.batchnorm import FoldResult  # noqa: PLC0415

    returns = dkm_tf.fold_batch_norm.__doc__.split("Returns:")[1].split("Raises:")[0]
    missing = [f.name for f in dataclasses.fields(FoldResult) if f"``{f.name}``" not in returns
               and f.name not in ("model", "folded", "skipped")]
    assert not missing


def test_export_all_example_makes_the_folder_it_needs(tmp_path):
    """``out_dir`` must exist (refused before any work); the example creates it first."""
    import pytest  # noqa: PLC0415

    from dkm_tf.export import export_all  # noqa: PLC0415

    with pytest.raises(ValueError, match="out_dir"):
        export_all(None, [], str(tmp_path / "missing"))
    doc = export_all.__doc__.split("Example:")[1]
    assert doc.index('os.makedirs("out"') < doc.index('export_all(plain, palettes, "out"')


UNITS = ("scalar", "row", "kernel", "auto")


def listed_units(doc, param="unit"):
    """The values of ``UNITS`` that ``doc``'s entry for ``param`` names as ``"value"``."""
    text = next((t for names, t in entries(doc).items() if param in names), "")
    return {u for u in UNITS if f'``"{u}"``' in text}


def accepted_units(call):
    out = set()
    for u in UNITS:
        try:
            call(u)
        except ValueError as e:
            assert "`unit`" in str(e) or "unit=" in str(e), e
        else:
            out.add(u)
    return out


def test_unit_values_listed_are_the_values_accepted():
    import warnings  # noqa: PLC0415

    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32)

    def model():
        return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
                                 keras.layers.Flatten(), keras.layers.Dense(2)])

    calls = {
        "cluster_tensor": lambda u: dkm_tf.cluster_tensor(kernel, kind="conv", n_clusters=4,
                                                          unit=u),
        "layout_for": lambda u: dkm_tf.layout_for(kernel.shape, "conv", unit=u),
        "SpectralKMeansRegularizer": lambda u: dkm_tf.SpectralKMeansRegularizer(4, unit=u),
        "ClusterWeights": lambda u: dkm_tf.ClusterWeights(keras.layers.Dense(2), unit=u),
        "cluster_weights": lambda u: dkm_tf.cluster_weights(model(), 4, unit=u),
        "share_weights": lambda u: dkm_tf.share_weights(model(), 4, unit=u),
        "attach_regularizer": lambda u: dkm_tf.attach_regularizer(model(), 4, unit=u),
    }
    wrong = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, call in calls.items():
            doc = getattr(dkm_tf, name).__doc__
            if name in ("ClusterWeights", "SpectralKMeansRegularizer"):
                doc += getattr(dkm_tf, name).__init__.__doc__ or ""
            listed, accepted = listed_units(doc), accepted_units(call)
            if listed != accepted:
                wrong.append(f"{name}: docstring lists {sorted(listed)}, "
                             f"accepts {sorted(accepted)}")
    assert not wrong, "\n".join(wrong)


def test_unit_listing_checker_reads_an_entry():
    doc = '''Summary.

    Args:
        unit: ``"scalar"``, ``"row"`` or ``"kernel"``.
        granularity: ``"auto"`` is not about unit.
    '''
    assert listed_units(doc) == {"scalar", "row", "kernel"}


def test_cluster_tensor_few_distinct_units_as_documented():
    """``cluster_tensor``'s Returns: a group with fewer distinct units than K gets them,
    padded by repeating the last; K' is the most any group has; ``note`` only when K' < K."""
    import numpy as np  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    kernel = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    kernel[:, 0] = 1.0  # output channel 0: one distinct value
    p = dkm_tf.cluster_tensor(kernel, kind="dense", n_clusters=4, granularity="per_channel")
    assert p.codebook.shape == (2, 4, 1)
    assert p.codebook[0].ravel().tolist() == [1.0] * 4 and p.note == ""
    p = dkm_tf.cluster_tensor(np.array([[1.0, 2.0], [1.0, 2.0]], np.float32), kind="dense",
                              n_clusters=4)
    assert p.codebook.shape == (1, 2, 1) and "lossless" in p.note
    doc = dkm_tf.cluster_tensor.__doc__.split("Returns:")[1]
    assert "K' = the most any group has" in " ".join(doc.split())
