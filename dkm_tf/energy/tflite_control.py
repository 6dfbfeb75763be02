"""Control flow and subgraphs of a `.tflite`: WHILE trip counts, IF branches, and the
subgraphs no op of the charged graph runs.

* WHILE (a Keras recurrent layer's time loop): :func:`trip_count` finds the iterations when
  the loop's bounds are constants (counter `i` from a constant start, `i += step` in the body,
  `i < limit` or `i <= limit` in the condition); the reader charges the body that many times.
  The condition subgraph's ops (a compare and a LOGICAL_AND per iteration) are loop control:
  listed in `skipped`, not charged.
* IF (`tf.cond`): only one branch runs per invoke, and which one depends on the data; the
  reader charges the costlier branch (more MACs, then more output values), an upper bound, and
  lists the other one in `skipped` (:func:`read_if`).
* Subgraphs that subgraph 0 never calls (a file converted with several signatures holds one
  entry subgraph per signature; a CALL_ONCE initializer runs once at load): listed in
  `skipped` with their signature key and op counts (:func:`unreached`), not charged. Energy
  is per invoke of subgraph 0 (the first signature).
"""

from collections import Counter


def _op_name(model, op_names, op):
    code = model.OperatorCodes(op.OpcodeIndex())
    name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
    if name == "CUSTOM":
        name += ":" + (code.CustomCode() or b"").decode("utf-8", "replace")
    return name


def _options(op, cls):
    obj = cls()
    table = op.BuiltinOptions()
    if table is not None:
        obj.Init(table.Bytes, table.Pos)
    return obj


def _scalar(graph, model, i):
    """The value of constant scalar int tensor `i` of `graph`, or None."""
    import numpy as np

    t = graph.Tensors(int(i))
    buf = model.Buffers(t.Buffer())
    if buf is None or buf.DataLength() == 0 or t.ShapeLength() > 1:
        return None
    raw = buf.DataAsNumpy().tobytes()
    dtype = {2: np.int32, 4: np.int64}.get(t.Type())
    if dtype is None or len(raw) != np.dtype(dtype).itemsize:
        return None
    return int(np.frombuffer(raw, dtype)[0])


def trip_count(model, schema, op_names, parent, op):
    """Iterations of WHILE `op` when its counter's bounds are constants, else None."""
    opts = _options(op, schema.WhileOptions)
    cond = model.Subgraphs(opts.CondSubgraphIndex())
    body = model.Subgraphs(opts.BodySubgraphIndex())
    inputs = list(op.InputsAsNumpy())
    cond_in, body_in = list(cond.InputsAsNumpy()), list(body.InputsAsNumpy())
    body_out = list(body.OutputsAsNumpy())

    def name(o):
        return _op_name(model, op_names, o)

    producers = {int(t): o for o in (body.Operators(k) for k in range(body.OperatorsLength()))
                 for t in o.OutputsAsNumpy()}
    trips = []
    for k in range(cond.OperatorsLength()):
        c = cond.Operators(k)
        if name(c) not in ("LESS", "LESS_EQUAL") or int(c.InputsAsNumpy()[0]) not in cond_in:
            continue
        j = cond_in.index(int(c.InputsAsNumpy()[0]))
        limit = _scalar(cond, model, c.InputsAsNumpy()[1])
        start = _scalar(parent, model, inputs[j])
        add = producers.get(int(body_out[j]))
        step = None
        if add is not None and name(add) == "ADD" and int(add.InputsAsNumpy()[0]) == body_in[j]:
            step = _scalar(body, model, add.InputsAsNumpy()[1])
        if None in (limit, start, step) or step <= 0:
            continue
        trips.append(max(0, -(-(limit - start + (name(c) == "LESS_EQUAL")) // step)))
    return min(trips) if trips else None


def _op_counts(model, op_names, s):
    g = model.Subgraphs(s)
    counts = Counter(_op_name(model, op_names, g.Operators(k)) for k in range(
        g.OperatorsLength()))
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "no ops"


def cond_entry(model, schema, op_names, op, label, trips):
    """The `skipped` entry of WHILE `op`'s condition subgraph (loop control)."""
    s = _options(op, schema.WhileOptions).CondSubgraphIndex()
    runs = "each iteration" if trips is None else f"{trips + 1} times"
    return (f"{label}/cond", f"loop condition (subgraph {s}: {_op_counts(model, op_names, s)}), "
            f"run {runs}: loop control, not charged")


def read_if(model, schema, op_names, op, label, read):
    """Reads both branches of IF `op`; returns `(records, skipped, palettes)` of the costlier.

    `read(s)` reads subgraph `s` and returns its `(records, skipped, palettes, used)`; the
    caller keeps the chosen branch's `used` names. The other branch is one `skipped` entry.
    """
    opts = _options(op, schema.IfOptions)
    branches = {"then": opts.ThenSubgraphIndex(), "else": opts.ElseSubgraphIndex()}
    read_ = {b: read(s) for b, s in branches.items()}

    def cost(b):
        records = read_[b][0]
        return sum(r.macs for r in records), sum(r.output_size for r in records)

    best = max(branches, key=cost)
    other = "else" if best == "then" else "then"
    records, skipped, palettes, used = read_[best]
    macs = cost(other)[0]
    note = (label, f"IF: one branch runs per invoke; charged the costlier, {best} (subgraph "
            f"{branches[best]}, {cost(best)[0]:,} MACs), not {other} (subgraph "
            f"{branches[other]}, {macs:,} MACs: {_op_counts(model, op_names, branches[other])})")
    return records, [note, *skipped], palettes, used


def reached(model, schema, op_names, start=0, seen=None, inits=None):
    """`(run, inits)`: the subgraph indices run from subgraph `start` per invoke (WHILE and IF
    followed), and those CALL_ONCE runs at initialization."""
    seen = set() if seen is None else seen
    inits = set() if inits is None else inits
    seen.add(start)
    g = model.Subgraphs(start)
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        name = _op_name(model, op_names, op)
        subs = ()
        if name == "WHILE":
            o = _options(op, schema.WhileOptions)
            subs = (o.CondSubgraphIndex(), o.BodySubgraphIndex())
        elif name == "IF":
            o = _options(op, schema.IfOptions)
            subs = (o.ThenSubgraphIndex(), o.ElseSubgraphIndex())
        elif name == "CALL_ONCE":
            inits.add(_options(op, schema.CallOnceOptions).InitSubgraphIndex())
        for s in subs:
            if s not in seen:
                reached(model, schema, op_names, s, seen, inits)
    return seen, inits


def unreached(model, schema, op_names):
    """`skipped` entries for the subgraphs subgraph 0 never runs (module docstring)."""
    keys = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        keys[sig.SubgraphIndex()] = (sig.SignatureKey() or b"").decode("utf-8", "replace")
    runs, inits = reached(model, schema, op_names)
    out = []
    for s in range(model.SubgraphsLength()):
        if s in runs:
            continue
        what = f"signature {keys[s]!r}" if s in keys else (
            "initializer (CALL_ONCE), run once at load" if s in inits
            else "not called from subgraph 0")
        first = f" (energy is per invoke of signature {keys[0]!r})" if 0 in keys else ""
        out.append((f"subgraph {s}", f"{what}: {_op_counts(model, op_names, s)}; not "
                    f"charged{first}"))
    return out
