"""The package layout as a contract: stages import downwards only, no import circle, the
numpy core loads neither Keras nor TensorFlow, and no module grows past 400 lines.

The import graph is read from the source (every ``import`` / ``from ... import`` statement,
function-level ones included), so a lazy import that closes a circle is caught too.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "dkm_tf"
MAX_LINES = 400

# stage -> the stages it may import (besides itself); the top level (pipeline, cli, data,
# models, the package __init__ and the _compat aliases) may import anything
ALLOWED = {
    "core": set(),
    "graph": {"core"},
    "training": {"core", "graph"},
    "export": {"core", "graph"},
    "energy": {"core", "graph"},
}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path, name, modules):
    """The dkm_tf modules that ``path`` (module ``name``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "dkm_tf")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "dkm_tf":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return out


def _graph():
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _stage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def test_import_graph_reads_function_level_imports():
    # the reader itself: a lazy import inside a function is an edge
    graph = _graph()
    assert "dkm_tf.training.reassign" in graph["dkm_tf.training.finetune"]
    assert "dkm_tf.core.kmeans" in graph["dkm_tf.core.palette"]
    assert "dkm_tf.export" in graph["dkm_tf.cli_export"]


def test_stages_import_downwards_only():
    bad = []
    for module, deps in _graph().items():
        stage = _stage(module)
        if stage is None:
            continue
        for dep in deps:
            target = _stage(dep)
            if dep in ("dkm_tf",) or (target != stage and target not in ALLOWED[stage]):
                bad.append(f"{module} ({stage}) imports {dep} ({target or 'top level'})")
    assert bad == []


def test_no_import_circle():
    graph = _graph()
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_core_imports_neither_keras_nor_tensorflow():
    core = sorted(m for m in _modules() if m.startswith("dkm_tf.core"))
    assert "dkm_tf.core.kmeans" in core and "dkm_tf.core.palette" in core
    code = ("import sys, importlib\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "import numpy as np, dkm_tf\n"
            "p = dkm_tf.cluster_tensor(np.arange(64.0).reshape(4, 4, 2, 2), kind='conv',"
            " n_clusters=4)\n"
            "print(dkm_tf.size_report([p]).summary()[:0])\n"
            "heavy = sorted({n.split('.')[0] for n in sys.modules} & "
            "{'keras', 'tensorflow', 'jax', 'torch', 'tf_keras'})\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_module_over_the_line_limit():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_stage_is_a_package_with_a_map():
    for stage in ALLOWED:
        init = PKG / stage / "__init__.py"
        assert init.exists(), stage
        assert ast.get_docstring(ast.parse(init.read_text())), f"{stage}/__init__.py: no docstring"
