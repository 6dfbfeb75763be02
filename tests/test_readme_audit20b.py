"""README.md's checkable claims against the code: names, keyword arguments, stated defaults and
constants, the ``dkm-tf`` flags (synopsis values and defaults), the supported-layer lists, the
Architecture table (modules and import layering) and every file path it names.

Each check reads the README text itself (``README`` below), so a renamed API, flag, module or
file, or a changed default, fails here until the README says the same. The README-reading
helpers take the text as an argument: ``test_checks_fail_on_a_wrong_readme`` feeds them
altered copies to show each check catches a wrong claim.
"""

import ast
import copy
import glob
import importlib
import inspect
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(text, heading):
    start = text.index(heading)
    nxt = re.search(r"\n#{2,3} ", text[start + len(heading):])
    return text[start:start + len(heading) + (nxt.start() if nxt else len(text))]


def _spans(text):
    """Inline code spans (single backticks, may wrap lines) and fenced block bodies."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    inline = re.findall(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)", re.sub(r"```.*?```", "", text,
                                                                        flags=re.S))
    return [s.replace("\n", " ") for s in inline] + blocks


# ---- names -------------------------------------------------------------------------------

def _resolve(dotted):
    """The object at ``dotted`` (modules imported as needed), or raise."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def dotted_names(text):
    names = set()
    for span in _spans(text):
        names.update(re.findall(r"(?<![\w/.])dkm_tf(?:\.[A-Za-z_]\w*)+", span))
    return sorted(names)


def box_names(text):
    """(name, module) of every API name in the "What is in the box" table: bare names belong
    to the module of the row's first dotted name (``dkm_tf.export.to_tflite``, ``export_all``)."""
    out = []
    for row in _section(text, "## What is in the box").splitlines()[4:]:
        if not row.startswith("|"):
            continue
        module = "dkm_tf"
        for tok in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[-2]):
            tok = tok.split("(")[0]
            if not re.fullmatch(r"[A-Za-z_][\w.]*", tok):
                continue  # `dkm-tf compress`, `colab/*.ipynb`
            if tok.startswith("dkm_tf."):
                module = tok.rsplit(".", 1)[0] if tok.count(".") > 1 else "dkm_tf"
                out.append((tok.rsplit(".", 1)[-1], module))
            else:
                out.append((tok, module))
    return out


def test_every_dkm_tf_name_the_readme_names_resolves():
    names = dotted_names(README)
    assert len(names) >= 25, names
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, missing


def test_every_name_in_the_box_table_resolves():
    pairs = box_names(README)
    assert len(pairs) >= 25, pairs
    missing = [f"{m}.{n}" for n, m in pairs if not hasattr(_resolve(m), n)]
    assert not missing, missing


# ---- keyword arguments and defaults --------------------------------------------------------

def _callables():
    import dkm_tf
    from dkm_tf import data, energy, export
    from dkm_tf.training import soft

    found = {n: getattr(dkm_tf, n) for n in dkm_tf.__all__ if n[0] != "_"}
    found = {n: f for n, f in found.items() if callable(f) and not inspect.ismodule(f)}
    found.update({n: getattr(export, n) for n in ("to_tflite", "export_all", "inspect_tflite")})
    found.update({"estimate": energy.estimate, "dkm_assign": soft.dkm_assign})
    found.update({n: getattr(data, n) for n in ("load_digits", "load_mnist", "load_dataset")})
    return found


def call_keywords(text):
    """(function name, keyword) of every ``name(..., kw=...)`` call shown in the README."""
    out = []
    for span in _spans(text):
        for m in re.finditer(r"\b([A-Za-z_]\w*)\(", span):
            depth, i = 1, m.end()
            while i < len(span) and depth:
                depth += {"(": 1, ")": -1}.get(span[i], 0)
                i += 1
            inner = span[m.end():i - 1]
            flat, depth = [], 0  # keywords at this call's own level only
            for ch in inner:
                depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
                flat.append(ch if depth == 0 else " ")
            for kw in re.findall(r"(?:^|[,(]\s*)([A-Za-z_]\w*)\s*=(?!=)", "".join(flat)):
                out.append((m.group(1), kw))
    return out


def _bad_keywords(pairs):
    funcs, bad, checked = _callables(), [], 0
    for name, kw in pairs:
        if name not in funcs:
            continue
        params = inspect.signature(funcs[name]).parameters
        if kw in params:
            checked += 1
        elif not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            bad.append(f"{name}({kw}=)")
    return bad, checked


def test_every_keyword_argument_the_readme_shows_exists():
    bad, checked = _bad_keywords(call_keywords(README))
    assert checked >= 30, checked
    assert not bad, bad


def _flat(text):
    return " ".join(text.split())


# (words the README says, callable, parameter, default the words state)
STATED_DEFAULTS = [
    ('`decode="once"` (default)', "dkm_tf.export.to_tflite", "decode", "once"),
    ("`fold_bn=None`, the default", "dkm_tf.share_weights", "fold_bn", None),
    ("the default of `dkm_tf.energy.estimate`", "dkm_tf.energy.estimate", "index_cost", "none"),
    ("the scale is stored at `scale_bits=16`", "dkm_tf.share_weights", "scale_bits", 16),
    ("the scale is stored at `scale_bits=16`", "dkm_tf.cluster_weights", "scale_bits", 16),
    ("`index_packing=\"tuples\"` (`--index_packing tuples`) keeps the tuple form",
     "dkm_tf.export.to_tflite", "index_packing", "dense"),
    ("`strip_clustering(wrapped)` folds after fine-tuning", "dkm_tf.strip_clustering",
     "fold_bn", True),
    ("`verify=False` loads other IDX files", "dkm_tf.data.load_mnist", "verify", True),
]


def stated_default_errors(text, table=STATED_DEFAULTS):
    errors, flat = [], _flat(text)
    for words, func, param, value in table:
        if words not in flat:
            errors.append(f"README no longer says {words!r}")
            continue
        default = inspect.signature(_resolve(func)).parameters[param].default
        if default != value:
            errors.append(f"{func}({param}=) defaults to {default!r}; README: {words!r}")
    return errors


def test_stated_defaults_match_the_signatures():
    assert not stated_default_errors(README)


def constant_errors(text):
    """Numbers the README states that are constants in the code."""
    from dkm_tf.core import _kmeans1d, kmeans, kmeans_batched
    from dkm_tf.export import pack, policy
    from dkm_tf.training import soft

    flat, errors = _flat(text), []
    claims = [
        ("3 indices per int16 for K ≤ 32, 4 for K ≤ 13",
         [pack.tuple_width(32) == 3, pack.tuple_width(33) == 2, pack.tuple_width(13) == 4,
          pack.tuple_width(14) == 3]),
        ("one codebook over at least 32,768 indices", [policy.DENSE_MIN_INDICES == 32_768]),
        ("3.5 KB of decode ops and tables once per file and 1 KB more per weight",
         [policy.DENSE_SHARED_BYTES == 3500, policy.DENSE_WEIGHT_BYTES == 1000]),
        ("exceeds 20 % of the float model's", [policy.LATENCY_BUDGET == 0.2]),
        ("values above 65,536 go through a 65,536-bin histogram",
         [kmeans._HIST_THRESHOLD == 65_536, _kmeans1d.HIST_BINS == 65_536]),
        ("exact dynamic program for groups of ≤ 32 values",
         [kmeans_batched.EXACT_MAX_VALUES == 32]),
        ("(`kmeans++`, `linear`, `density`, `random`)",
         [kmeans.INITS == ("kmeans++", "linear", "density", "random")]),
        ("(at most 5 steps, tolerance 1e-4,", [soft.MAX_ITER == 5, soft.TOL == 1e-4]),
        ("(Dense / Conv2D with at most 8,192 inputs per output)",
         [_resolve("dkm_tf.graph.refine_targets.GPTQ_MAX_INPUTS") == 8192]),
        ('`refine="outputs"` skips GPTQ', [_resolve("dkm_tf.graph.refine.REFINES")
                                           == (None, "outputs", "gptq")]),
        ("float, fp16, int8, TFLite Micro",
         [set(_resolve("dkm_tf.export.FORMATS")) == {"float", "fp16", "palettized", "int8",
                                                     "tflm"}]),
        ('* `decode="per_invoke"`: the smallest file',
         [_resolve("dkm_tf.export.DECODE_MODES") == ("once", "per_invoke")]),
        ("`scale_bits=16` (float16; `8`: int8 times one step per layer; `32`)",
         [set(_resolve("dkm_tf.core.kernel_palette.SCALE_BITS")) == {8, 16, 32}]),
        ("`transforms=2|4|8` adds transform-invariant clustering",
         [_resolve("dkm_tf.core.kernel_palette.TRANSFORM_COUNTS") == (1, 2, 4, 8)]),
        ("| `auto` | `row` for k x k convs, `scalar` otherwise",
         [_resolve("dkm_tf.core.units.UNIT_CHOICES") == ("scalar", "row", "kernel", "auto")]),
    ]
    for words, checks in claims:
        if words not in flat:
            errors.append(f"README no longer says {words!r}")
        elif not all(checks):
            errors.append(f"the code disagrees with {words!r}")
    return errors


def test_stated_constants_match_the_code():
    assert not constant_errors(README)


def test_kernel_bits_gives_the_papers_vgg16_figures():
    import dkm_tf

    flat = _flat(README)
    assert ("`dkm_tf.kernel_bits(1_634_496, 256)` gives the paper's CIFAR VGG-16 figures, "
            "24 bits per kernel, 4.91 MB, 12.0x") in flat
    r = dkm_tf.kernel_bits(1_634_496, 256)
    assert r["bits_per_kernel"] == 24
    assert round(r["bytes"] / 1e6, 2) == 4.91 and round(r["ratio"], 1) == 12.0


def test_compression_ratio_formula_is_the_one_the_code_uses():
    import numpy as np

    import dkm_tf

    assert "`CR = N·d·32 / (N·log2 K + K·d·32)`" in README
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype("float32")
    p = dkm_tf.cluster_tensor(w, kind="conv", n_clusters=16, unit="row")
    n, d, k = p.n_units, p.unit_dim, 16
    np.testing.assert_allclose(p.compression_ratio(), n * d * 32 / (n * np.log2(k) + k * d * 32),
                               rtol=1e-12)
    np.testing.assert_allclose(p.compression_ratio("entropy"),
                               n * d * 32 / (n * p.entropy_bits() + k * d * 32), rtol=1e-12)
    totals = dkm_tf.size_report([p], other_params=8).to_dict()["totals"]  # biases at 32 bits
    np.testing.assert_allclose(totals["cr_model_log2"], (n * d + 8) * 32
                               / (n * np.log2(k) + k * d * 32 + 8 * 32), rtol=1e-12)


# ---- the dkm-tf command ----------------------------------------------------------------------

def synopsis(text):
    """{command: [(flag, shown value or None)]} of the README's ``dkm-tf`` synopsis block."""
    block = re.search(r"```\n(dkm-tf compress .*?)```", _section(text, "## The `dkm-tf` command"),
                      re.S).group(1)
    compress, energy = block.split("dkm-tf energy")
    out = {}
    for cmd, part in (("compress", compress), ("energy", energy)):
        out[cmd] = [(name, (value or "").strip() or None)
                    for name, value in re.findall(r"--(\[no\]\w+|\w+)( [^\]\s]+)?", part)]
    return out


def _flag_values():
    from absl import flags

    import dkm_tf.cli  # noqa: F401  (defines the flags)

    return copy.deepcopy(flags.FLAGS)


def synopsis_errors(text):
    from dkm_tf import cli_args

    fv, errors = _flag_values(), []
    for cmd, entries in synopsis(text).items():
        for name, value in entries:
            base = name.replace("[no]", "")
            if base == "verbose":  # handled by cli.run before absl
                if "--verbose" not in cli_args.help_text(cmd):
                    errors.append("--verbose is not in the help")
                continue
            if base not in cli_args.COMMAND_FLAGS[cmd] and base != "quiet":
                errors.append(f"--{base} is not a flag of dkm-tf {cmd}")
                continue
            flag = fv[base]
            bool_ok = flag.flag_type() == "bool" and (name.startswith("[no]") or not flag.default)
            if (name.startswith("[no]") or flag.flag_type() == "bool") and not bool_ok:
                errors.append(f"--{name}: the flag is of type {flag.flag_type()}, default "
                              f"{flag.default!r}")
            if value is None:
                continue
            enum = getattr(flag.parser, "enum_values", None)
            shown = value.split("|")
            if enum is not None:
                if shown != list(enum):
                    errors.append(f"--{base} {value}: the flag allows {'|'.join(enum)}")
            elif base in ("transforms", "scale_bits"):
                for v in shown:
                    kw = {"transforms": int(v), "scale_bits": 16} if base == "transforms" else \
                        {"transforms": 2, "scale_bits": int(v)}
                    try:
                        cli_args._kernel_flags("kernel", "shared", **kw)
                    except cli_args.CliUsageError as e:
                        errors.append(f"--{base} {v} is refused: {e}")
                if int(shown[0]) != flag.default:
                    errors.append(f"--{base}: default {flag.default}, README shows {shown[0]}")
            elif flag.flag_type() in ("int", "float"):
                if float(value) != flag.default:
                    errors.append(f"--{base}: default {flag.default}, README shows {value}")
            elif base == "output_dir" and value != flag.default:
                errors.append(f"--{base}: default {flag.default}, README shows {value}")
            if base == "input_shape" and cli_args.parse_input_shape(value) != (12, 12, 3):
                errors.append(f"--input_shape {value} does not parse")
    return errors


def test_the_synopsis_flags_exist_with_their_values_and_defaults():
    entries = synopsis(README)
    assert len(entries["compress"]) >= 25 and len(entries["energy"]) == 2, entries
    assert not synopsis_errors(README)


def test_every_compress_flag_is_in_the_synopsis():
    from dkm_tf import cli_args

    shown = {n.replace("[no]", "") for n, _ in synopsis(README)["compress"]}
    assert set(cli_args.COMMAND_FLAGS["compress"]) <= shown, \
        set(cli_args.COMMAND_FLAGS["compress"]) - shown


def _script_flags(path):
    src = (ROOT / path).read_text()
    names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", src))
    bools = set(re.findall(r"DEFINE_bool(?:ean)?\(\s*[\"'](\w+)[\"']", src))
    return names | {f"no{b}" for b in bools}


def prose_flag_errors(text):
    """Every ``--flag`` in the command section's prose (and the palettized section's, which
    names ``export/to_tflite.py``'s) is a flag of ``dkm-tf`` or of that script; the spellings
    it shows as mistyped are refused with the suggestion it quotes."""
    from absl import flags

    fv = _flag_values()
    known = {f for f in fv} | {f"no{f}" for f in fv if fv[f].flag_type() == "bool"}
    known |= {"help", "version", "verbose"}
    known |= _script_flags("export/to_tflite.py") | _script_flags("export/inspect_tflite.py")
    sections = (_section(text, "## The `dkm-tf` command")
                + _section(text, "### Palettized TFLite: what is stored and how it runs"))
    mistyped = re.search(r"\(`dkm-tf compres`: did you mean 'compress'\?; (.*?)\)\.",
                         _flat(sections))
    errors = [] if mistyped else ["the mistyped-flag example is gone"]
    typos = re.findall(r"`(--[\w-]+)`", mistyped.group(1)) if mistyped else []
    for typo in typos[:-1]:
        try:
            copy.deepcopy(flags.FLAGS)(["dkm-tf", typo])
            errors.append(f"{typo} is accepted")
        except flags.Error:
            pass
        from dkm_tf import cli

        out, err = io.StringIO(), io.StringIO()
        if cli.run(["dkm-tf", "compress", typo], stdout=out, stderr=err) != 2 \
                or typos[-1] not in err.getvalue():
            errors.append(f"{typo}: {err.getvalue().strip()}")
    for name in set(re.findall(r"(?<![\w-])--([a-z][\w-]*)", sections)) - {t[2:] for t in typos}:
        if name not in known:
            errors.append(f"--{name}")
    return errors


def test_every_flag_the_prose_names_exists():
    assert not prose_flag_errors(README)


def test_the_output_files_the_readme_lists_are_the_runs_files():
    from dkm_tf.cli_args import run_outputs

    flat = _flat(_section(README, "## The `dkm-tf` command"))
    files = {pathlib.Path(p).name for p in run_outputs("out")}
    targets = re.search(r"`clustered\.\{([\w,]+)\}\.tflite`", flat).group(1).split(",")
    listed = {f"clustered.{t}.tflite" for t in targets}
    listed |= {n for n in re.findall(r"`([\w.]+\.(?:json|keras|png))`", flat)
               if not n.startswith("m.") and n != "layers.json"}
    assert listed == files, listed ^ files


# ---- supported layers --------------------------------------------------------------------------

def _expand(names_text):
    """``Conv1D/2D/3D`` -> Conv1D, Conv2D, Conv3D; ``Conv*Transpose`` stays a pattern."""
    out = set()
    for tok in re.findall(r"[A-Z][\w*]*(?:/\dD)*", names_text):
        m = re.fullmatch(r"(\w*?)(\dD)((?:/\dD)*)", tok)
        out.update(m.group(1) + d for d in [m.group(2), *m.group(3).split("/")[1:]]) if m \
            else out.add(tok)
    return out


def supported_layer_errors(text):
    import keras

    from dkm_tf.graph.clusterable import SUPPORTED_LAYERS

    sec = _section(text, "### Supported layers")
    listed = _expand(_flat(sec[:sec.index("plus any layer")]).replace("**", ""))
    code = {s.split(" ")[0] for s in SUPPORTED_LAYERS}
    errors = [f"{c} supported, not listed" for c in sorted(code) if c not in listed
              and not any("*" in p and re.fullmatch(p.replace("*", r"\w*"), c) for p in listed)]
    errors += [f"{n} listed, not supported" for n in sorted(listed)
               if "*" not in n and hasattr(keras.layers, n) and n not in code]
    not_sup = re.search(r"\n([^\n.]*) (?:is|are) not supported \(skipped and reported\)", sec)
    if not_sup is None:
        return errors + ["the not-supported sentence is gone"]
    for name in _expand(not_sup.group(1)):
        classes = [getattr(keras.layers, a) for a in dir(keras.layers)
                   if isinstance(getattr(keras.layers, a), type)
                   and name in (a, getattr(keras.layers, a).__name__)]
        if not classes:
            errors.append(f"{name}: no such Keras layer")
        errors += [f"{name} is said unsupported, but {c.__name__} is supported"
                   for c in classes if c.__name__ in code
                   or any(a in code for a in dir(keras.layers) if getattr(keras.layers, a) is c)]
    return errors


def test_the_supported_layer_lists_agree_with_the_code():
    assert not supported_layer_errors(README)


def test_a_layer_said_unsupported_is_skipped_with_a_reason():
    import keras

    import dkm_tf

    inp = keras.Input((2, 4, 4, 1))
    out = keras.layers.ConvLSTM2D(2, 3, name="clstm")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(out)))
    result = dkm_tf.share_weights(model, 2)
    assert [p.name for p in result.palettes] == ["d/kernel"]
    assert [n for n, _ in result.skipped] == ["clstm"]


# ---- architecture -------------------------------------------------------------------------------

def _allowed():
    tree = ast.parse((ROOT / "tests" / "test_architecture.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ALLOWED":
            return ast.literal_eval(node.value)
    raise AssertionError("no ALLOWED in tests/test_architecture.py")


def architecture_errors(text):
    allowed, errors, rows = _allowed(), [], 0
    for line in _section(text, "## Architecture").splitlines():
        m = re.match(r"\| `dkm_tf/([\w/]*)` \| (.*) \| (.*) \|$", line)
        if not m:
            continue
        rows += 1
        folder = ROOT / "dkm_tf" / m.group(1)
        src = " ".join(p.read_text() for p in folder.glob("*.py"))
        for tok in re.findall(r"`([^`]+)`", m.group(2)):
            name = tok[:-3] if tok.endswith(".py") else tok
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                continue
            if not ((folder / f"{name}.py").exists()
                    or re.search(rf"\b(?:def|class) {name}\b|\b{name}=|[\"']{name}[\"']", src)):
                errors.append(f"dkm_tf/{m.group(1)}: `{tok}` is neither a module nor defined")
        package = m.group(1).strip("/")
        if package in allowed:
            said = {w.strip() for w in m.group(3).split(",")} & set(allowed)
            if said != allowed[package]:
                errors.append(f"{package} imports {sorted(allowed[package])}, README {said}")
    return errors + ([] if rows == 6 else [f"{rows} architecture rows"])


def test_the_architecture_table_names_real_modules_and_the_enforced_layering():
    assert not architecture_errors(README)


# ---- files ----------------------------------------------------------------------------------

def path_errors(text):
    errors = []
    paths = set(re.findall(r"(?<![\w/.~])((?:bench|tests|dkm_tf|export|colab|\.ci)/"
                           r"[\w./*-]*[\w*/])", text))
    assert len(paths) >= 40, paths
    for p in sorted(paths):
        if not glob.glob(str(ROOT / p)):
            errors.append(p)
    for name in set(re.findall(r"(?<![\w/])(test_[\w*]+\.py)", text)):  # the Backends table's
        if not glob.glob(str(ROOT / "tests" / name)):
            errors.append(f"tests/{name}")
    for test_file, func in re.findall(r"(tests/\w+\.py)::(\w+)", text):
        if not re.search(rf"^def {func}\(", (ROOT / test_file).read_text(), re.M):
            errors.append(f"{test_file}::{func}")
    return errors


def test_every_path_the_readme_names_exists():
    assert not path_errors(README)


def test_the_backend_table_names_real_scenarios():
    src = (ROOT / "tests" / "_backend_checks.py").read_text()
    scenarios = ast.literal_eval(re.search(r"^SCENARIOS = (\(.*?\))", src, re.M | re.S)
                                 .group(1))
    named = set(re.findall(r"test_scenario\[(\w+)\]", README))
    assert named and named <= set(scenarios), named - set(scenarios)


def _n_tests(path, scenarios):
    """Tests a backend file collects: its test functions, ``test_scenario`` once per scenario."""
    tree = ast.parse((ROOT / path).read_text())
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name.startswith("test_")]
    return len(names) - 1 + len(scenarios) if "test_scenario" in names else len(names)


def backend_count_errors(text):
    src = (ROOT / "tests" / "_backend_checks.py").read_text()
    scenarios = ast.literal_eval(re.search(r"^SCENARIOS = (\(.*?\))", src, re.M | re.S)
                                 .group(1))
    jax_src = (ROOT / "tests" / "test_backend_jax.py").read_text()
    main = ast.literal_eval(re.search(r"^MAIN_TRAINING_TESTS = (\[.*?\])", jax_src,
                                      re.M | re.S).group(1))
    flat = _flat(text)
    said = {int(n) for n in re.findall(r"\((\d+) files: wrapper", flat)}
    said |= {int(n) for n in re.findall(r"runs the (\d+) files listed in `MAIN_TRAINING_TESTS`",
                                         flat)}
    errors = [] if said == {len(main)} else [f"README: {said} main training files; {len(main)}"]
    for name, where in (("jax", r"`tests/test_backend_jax\.py` \((\d+) tests"),
                        ("torch", r"pytest tests/test_backend_torch\.py` \((\d+) tests")):
        said_n, n = re.search(where, flat), _n_tests(f"tests/test_backend_{name}.py", scenarios)
        if not said_n or int(said_n.group(1)) != n:
            errors.append(f"test_backend_{name}.py collects {n} tests; README: "
                          f"{said_n and said_n.group(1)}")
    return errors


def test_the_backend_test_counts_the_readme_states():
    assert not backend_count_errors(README)


def bench_errors(text):
    sec = _section(text, "## Benchmarks")
    listed = set(re.findall(r"^\| `bench/(\w+)\.py` \|", sec, re.M))
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")}
    errors = [] if len(listed) >= 20 else [f"{len(listed)} scripts in the Benchmarks table"]
    errors += [f"bench/{s}.py listed, missing" for s in sorted(listed - scripts)]
    errors += [f"bench/results/{s}.{ext} missing" for s in sorted(listed) for ext in ("md", "json")
               if not (ROOT / "bench" / "results" / f"{s}.{ext}").exists()]
    return errors


def test_every_script_in_the_benchmarks_table_exists_with_its_results():
    assert not bench_errors(README)


def test_supported_keras_range_is_the_packages():
    import configparser

    import dkm_tf

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "keras>=3.10,<4" in cfg["options"]["install_requires"].split()
    assert "Keras `>=3.10,<4`" in README and dkm_tf._KERAS_REQUIRED == ((3, 10), (4, 0))
    extras = set(cfg["options.extras_require"])
    named = set(re.findall(r"`\[(\w+)\]`", _section(README, "## Install extras")))
    assert named == extras, named ^ extras


# ---- the checks catch wrong READMEs -----------------------------------------------------------

WRONG = [  # (what the check reads, the README changed, the check)
    ("dotted name", ("`dkm_tf.fold_batch_norm`", "`dkm_tf.fold_batchnorm`"),
     lambda t: [n for n in dotted_names(t) if n == "dkm_tf.fold_batchnorm"]),
    ("box name", ("`palettes_of`, `finetune`, `Reassign", "`palette_of`, `finetune`, `Reassign"),
     lambda t: [n for n, m in box_names(t) if not hasattr(_resolve(m), n)]),
    ("keyword", ("`cluster_weights(..., return_report=True)`",
                 "`cluster_weights(..., report=True)`"),
     lambda t: _bad_keywords(call_keywords(t))[0]),
    ("default", ('`decode="once"` (default)', '`decode="per_invoke"` (default)'),
     stated_default_errors),
    ("constant", ("exceeds 20 % of the float", "exceeds 25 % of the float"), constant_errors),
    ("synopsis default", ("[--finetune_epochs 3]", "[--finetune_epochs 5]"), synopsis_errors),
    ("synopsis enum", ("[--init kmeans++|linear|density|random]", "[--init kmeans++|linear]"),
     synopsis_errors),
    ("synopsis int values", ("[--scale_bits 16|8|32]", "[--scale_bits 16|8|4]"),
     synopsis_errors),
    ("synopsis flag", ("[--calibration_samples 256]", "[--calib_samples 256]"),
     synopsis_errors),
    ("prose flag", ("`--noplots` skips the plots", "`--no_plot` skips the plots"),
     prose_flag_errors),
    ("unsupported layer", ("ConvLSTM1D/2D/3D are not supported",
                           "ConvLSTM1D/2D/3D and GroupedQueryAttention are not supported"),
     supported_layer_errors),
    ("supported layer", ("**SimpleRNN, LSTM, GRU**", "**SimpleRNN, LSTM**"),
     supported_layer_errors),
    ("module", ("`regularizer_state`", "`regularizer_states`"), architecture_errors),
    ("path", ("`bench/results/load_memory.md`", "`bench/results/load_memory2.md`"), path_errors),
    ("backend test count", ("(13 tests, one JAX", "(12 tests, one JAX"), backend_count_errors),
    ("main training files", ("(20 files: wrapper", "(19 files: wrapper"), backend_count_errors),
    ("bench row", ("| `bench/scale19.py` |", "| `bench/scale_19.py` |"), bench_errors),
]


@pytest.mark.parametrize("case", WRONG, ids=lambda w: w[0])
def test_checks_fail_on_a_wrong_readme(case):
    _, (old, new), check = case
    assert README.count(old) == 1, old
    assert not check(README)
    assert check(README.replace(old, new))


def test_layering_check_fails_on_a_wrong_imports_column():
    line = next(ln for ln in README.splitlines() if ln.startswith("| `dkm_tf/energy/`"))
    assert line.endswith("| core, graph |")
    assert architecture_errors(README.replace(line, line[:-len("core, graph |")]
                                              + "core, graph, training |"))
