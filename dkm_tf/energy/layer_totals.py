"""The cost of a `TimeDistributed` layer's call, charged as one copy of its records per step.

The Keras reader charges a `TimeDistributed` layer once per step, as the converter unrolls it
(`keras_wrapped.step_records`; a TimeDistributed model or Lambda walked once per step,
`keras_wrapped.wrapped_graph`), and tags each step's records with `(call, k, T)`
(`LayerShape.steps`). `EnergyReport.layer(call)` sums them into a `LayerTotal`: before
2026-12-07 it returned the record named `call`, the first step's, 1/T of the layer with no
warning (a TimeDistributed Dense(4) over 3 steps of 8: 32 MACs of 96), and for a
TimeDistributed LSTM, EinsumDense or Lambda, whose records are named `td/cell.kernel`,
`td/kernel` or after the Lambda's ops, it raised `KeyError`. Each step's records keep their
own names (`td`, `td#2`, `td#2/cell.kernel`, ...: `EnergyReport.record(name)`).

The tables (`EnergyReport.summary`, `plot`, `dkm_tf.plots.plot_energy`) print one row per
record of a step, summed over the steps and named `td [3 steps]`, `td/cell.kernel [3 steps]`
or, for a record not named after the call (a Lambda's op), `clip [td: 3 steps]` (`rows`);
before, one row per step, the first named as the layer.

Any other layer call charged as several records is summed so too (`total`): a layer whose
records are `name` and `name/...` (a `Dense(activation="silu")`'s `d` and `d/silu`, an LSTM's
`r/cell.kernel`, ..., a Lambda's ops `lam`, `lam/2`, ...) and a nested model's call (its
records tagged `LayerShape.within`); before 2026-12-07 `EnergyReport.layer("d")` was the matrix
product alone, `layer("r")` and `layer("nm")` raised `KeyError`, `layer("lam")` was the first
op. A layer charged as one record named after it is that `LayerEnergy`. Pure Python: no Keras,
no TensorFlow.
"""

import dataclasses
import difflib
import re

from dkm_tf.energy.hierarchy import HierarchyCost
from dkm_tf.energy.paper import PaperCost


@dataclasses.dataclass(frozen=True)
class LayerTotal:
    """The records of one layer call charged as several, summed: every step of a call of a
    `TimeDistributed` layer, a nested model's call, a layer's `name` and `name/...` records.

    It has the attributes of a `LayerEnergy`: `macs`, `paper_total`, `hierarchy_total`,
    `paper` and `hierarchy` (their terms and traffic summed, so `paper_terms()` and
    `hierarchy_parts()` are the records' sums), `n_clusters`, ... .

    Attributes:
        name: The call's name (`td`; a second call of a TimeDistributed of T steps `td#<T+1>`,
            the name of its first step's record); in a table row (`rows`), the name of the
            row's first record (`td/cell.kernel`: that record of every step).
        records: The `LayerEnergy` records of all steps, in model order.
        steps: T, the number of steps of this call (1 for a call that is not a
            `TimeDistributed`'s); a TimeDistributed nested in a TimeDistributed model is its
            own call, tagged in each outer step: its records are T · T2.
    """

    name: str
    records: tuple
    steps: int

    @property
    def macs(self):
        """Dense MACs per image of all steps (the records' sum)."""
        return sum(r.macs for r in self.records)

    @property
    def paper(self):
        """A `PaperCost` whose terms are the records' sums (at the first record's FA_MAC
        and κ, its full-adder and bit-use counts rescaled where the records' differ)."""
        first = self.records[0].paper
        fa, kappa = first.fa_per_mac, first.kappa
        terms = {t: sum(getattr(r.paper, t) for r in self.records)
                 for t in ("compute", "weights", "activations")}
        return PaperCost(compute_fa=terms["compute"] * fa,
                         weight_bits=terms["weights"] * fa / kappa,
                         activation_bits=terms["activations"] * fa / kappa,
                         fa_per_mac=fa, kappa=kappa)

    @property
    def hierarchy(self):
        """A `HierarchyCost` of the records' MAC energy and traffic summed."""
        words = _summed(kw for r in self.records for kw in r.hierarchy.traffic)
        return HierarchyCost(compute=sum(r.hierarchy.compute for r in self.records),
                             traffic=tuple(words.items()))

    @property
    def paper_total(self):
        """Paper metric of all steps in MAC units (the records' sum)."""
        return sum(r.paper_total for r in self.records)

    @property
    def hierarchy_total(self):
        """Hierarchy-model energy of all steps (the records' sum)."""
        return sum(r.hierarchy_total for r in self.records)

    def paper_terms(self):
        """`{"compute", "weights", "activations"}` → MAC units, summed over the records."""
        return _summed(kv for r in self.records for kv in r.paper_terms().items())

    def hierarchy_parts(self):
        """`{"mac", "rf", "array", "buffer", "dram"}` → energy, summed over the records."""
        return _summed(kv for r in self.records for kv in r.hierarchy_parts().items())

    @property
    def shape(self):
        """The steps' `LayerShape` with `repeat` × T, named `name`, where every step is one
        record of one shape (a TimeDistributed Dense or conv); else None (an LSTM's kernel,
        recurrent kernel and gate records: read `records`)."""
        first = self.records[0].shape
        if len(self.records) != self.steps or any(_bare(r.shape) != _bare(first)
                                                  for r in self.records):
            return None
        return dataclasses.replace(first, name=self.name, repeat=first.repeat * self.steps,
                                   steps=())

    @property
    def n_clusters(self):
        """K of the weight-shared kernels (`_common`)."""
        return _common(self.records, "n_clusters")

    @property
    def unit_dim(self):
        """d of the weight-shared kernels (`_common`)."""
        return _common(self.records, "unit_dim")

    @property
    def index_bits(self):
        """Bits per index of the kernels (`_common`)."""
        return _common(self.records, "index_bits")

    @property
    def kept_fraction(self):
        """Fraction of weights kept of the kernels (`_common`)."""
        return _common(self.records, "kept_fraction")

    @property
    def unique_fraction(self):
        """Fraction of unit products computed of the kernels (`_common`)."""
        return _common(self.records, "unique_fraction")

    @property
    def stored_weight_bits(self):
        """Bits of the stored kernels, each once (every step, every call of a shared layer
        reads the same kernel: records of one model layer, `LayerShape.layer`, and one part of
        it, `/cell.kernel`, ...; before 2026-12-07 the records of the first 1/T of them, which
        counted a TimeDistributed's kernel T2 times inside a TimeDistributed model). The part
        is read from a record's name only where the name is its layer's (`r/cell.kernel`,
        `r#2/cell.kernel`): a Dense `d` called twice in a Lambda `lam` (`lam`, `lam/2`) was
        two parts of `d`, its kernel counted twice before 2026-12-07."""
        kernels = {}
        for r in self.records:
            base, _, part = r.name.partition("/")
            if re.sub(r"#\d+$", "", base) != r.shape.layer:  # a Lambda's op `lam/2` of `d`
                part = ""
            kernels.setdefault((r.shape.layer, part, r.shape.n_weights), r.stored_weight_bits)
        return sum(kernels.values())


def _summed(pairs):
    """`{key: sum of its values}` of the `(key, value)` `pairs`, keys in first-seen order."""
    out = {}
    for k, v in pairs:
        out[k] = out.get(k, 0.0) + v
    return out


def _bare(shape):
    return dataclasses.replace(shape, name="", steps=())


def _common(records, attr):
    """`attr` of the records with a kernel (all records where none has one): their value
    where they agree, else a tuple of their distinct values in record order."""
    kernels = [r for r in records if r.shape.n_weights] or list(records)
    values = list(dict.fromkeys(getattr(r, attr) for r in kernels))
    return values[0] if len(values) == 1 else tuple(values)


def calls(layers):
    """`{call: [records]}` of the `TimeDistributed` calls charged per step in `layers` (each
    record under every call it is a step of, outermost first), in model order."""
    out = {}
    for r in layers:
        for call, _, _ in r.shape.steps:
            out.setdefault(call, []).append(r)
    return out


def nested(layers):
    """`{call: [records]}` of the nested models' calls in `layers` (`LayerShape.within`)."""
    out = {}
    for r in layers:
        for call in r.shape.within:
            out.setdefault(call, []).append(r)
    return out


def parts(layers, name):
    """The records of the layer call `name`: named `name` or `name/...` (a Keras layer's name
    has no `/`; an `Activation("selu")`'s ops `act`, `act/2`, `act/3`: `activations.op_name`)."""
    return [r for r in layers if r.name == name or r.name.startswith(name + "/")]


def total(layers, name):
    """The `LayerTotal` of the call `name` in `layers` (a `TimeDistributed`'s steps, a nested
    model's records, a layer's `parts`), or None where `name` is one record's alone (or none's).

    Raises:
        ValueError: Where `name` names records of two things (a record named `name` beside
            the call's records, two records of that name).
    """
    records, steps = calls(layers).get(name), None
    if records:
        steps = next(t for c, _, t in records[0].shape.steps if c == name)
    else:
        records = nested(layers).get(name) or parts(layers, name)
    same = [r for r in layers if r.name == name]
    if len(same) > 1 or same and not any(r is same[0] for r in records):
        raise ValueError(f"Layer name {name!r} is ambiguous in this report: records "
                         f"{[(r.name, r.shape.op, r.macs) for r in same]} and the call's "
                         f"{[r.name for r in records][:8]}. Read `report.layers`.")
    if not records or len(records) == 1 and records[0].name == name and steps is None:
        return None
    return LayerTotal(name=name, records=tuple(records), steps=steps or 1)


def groups(layers):
    """`[(name, LayerTotal, within)]` of every call in `layers` charged as several records: a
    `TimeDistributed`'s (`calls`), a nested model's (`nested`) and a layer's `parts` outside
    a step; `within` the names of the listed calls holding all of its records, outermost
    first (summing the rows with no `within` counts each record once)."""
    names, by_base = [*calls(layers), *nested(layers)], {}
    for r in layers:
        if not r.shape.steps:
            by_base.setdefault(r.name.split("/")[0], []).append(r)
    names += [b for b, rs in by_base.items() if len(rs) > 1 or rs[0].name != b]
    found = []
    for n in dict.fromkeys(names):
        try:
            x = total(layers, n)
        except ValueError:  # a name of two things (`total`): not listed
            continue
        if x is not None:
            found.append((n, x))
    ids = {n: {id(r) for r in x.records} for n, x in found}
    at = {n: i for i, (n, _) in enumerate(found)}  # calls, nested, parts: outermost first
    return [(n, x, [m for m, _ in sorted(found, key=lambda f: -len(ids[f[0]]))
                    if ids[n] < ids[m] or ids[n] == ids[m] and at[m] < at[n]])
            for n, x in found]


def unknown(name, layers, skipped):
    """The `LookupError` for a `name` of no record nor step call: why it is not charged where
    `skipped` lists it, else the closest names."""
    why = [w for n, w in skipped if n == name]
    if why:
        return UnknownLayerError(f"Layer {name!r} is not charged in this report: "
                                 f"{'; '.join(why)}")
    call, _, inner = name.partition("/")  # a path `nm/d`: the records of `d` inside `nm`
    named = [x.name for x in nested(layers).get(call, []) if inner and x.shape.layer == inner]
    if named:
        return UnknownLayerError(f"No record nor call is named {name!r}: records are named "
                                 f"after calls, not paths; the layer {inner!r} inside the "
                                 f"nested call {call!r} is charged as the records {named[:8]} "
                                 f"(`report.record(name)`; `report.layer({call!r})` sums "
                                 f"{call!r})")
    owned = [(x.name, x.shape.steps[0][0] if x.shape.steps else x.name.split("/")[0])
             for x in layers if x.shape.layer == name]  # a TimeDistributed Dense: `td`, ...
    if owned:
        return UnknownLayerError(f"No record nor call is named {name!r}: the layer {name!r} "
                                 f"is charged as the records {[n for n, _ in owned][:8]} (of "
                                 f"the calls {list(dict.fromkeys(c for _, c in owned))}: "
                                 f"`report.layer(call)`)")
    names = list(dict.fromkeys([*calls(layers), *(x.name for x in layers)]))
    close = [n for n in names if n.startswith(name + "/") or n.startswith(name + "#")][:8]
    close += [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.6)
              if n not in close]
    every = (f"names: {names}" if len(names) <= 20 else
             f"{len(names)} names: `[x.name for x in report.layers]`")
    return UnknownLayerError(f"No layer {name!r} in the report. Closest names: "
                             f"{close or 'none'} ({every})")


class UnknownLayerError(KeyError, ValueError):
    """A layer name the report has no record of (a `KeyError`, as before, and a
    `ValueError`)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def label(record):
    """`record`'s name in a per-record table: `td#2 [step 2/3]` for a step of a
    `TimeDistributed` call (outermost), else its name."""
    if not record.shape.steps:
        return record.name
    _, k, t = record.shape.steps[0]
    return f"{record.name} [step {k}/{t}]"


def rows(layers):
    """`[(label, LayerEnergy or LayerTotal)]` of a per-layer table: a `TimeDistributed` call's
    i-th record of every step summed into one row (`td [3 steps]`, `clip [td: 3 steps]`), at
    its first step's place; where its steps differ in records or shapes, one row per record
    labelled with its step (`label`). A record named as its layer that is one of several
    records of it (a `Dense(activation="silu")`'s `d` beside `d/silu`) is labelled
    `d [1 of 2 records]`: `EnergyReport.layer("d")` is the sum.

    A row sums the i-th record of every step of the OUTERMOST call: in a TimeDistributed model
    holding `TimeDistributed(..., name="itd")` over T2 steps, the row `itd [td: 3 steps]` is
    the record `itd` of each of td's 3 steps (3 records), while `EnergyReport.layer("itd")`
    is the inner call of td's first step (its T2 records): they differ (96 and 64 MACs for a
    Dense(4) of 8 over 3 x 2 steps)."""
    groups = {}  # (call, position in its step) -> records
    for call, recs in calls([r for r in layers if r.shape.steps]).items():
        if call in {r.shape.steps[0][0] for r in recs}:  # outermost calls only
            groups.update(_positions(call, recs))
    where = {id(x): k for k, recs in groups.items() for x in recs}
    out, seen, bases = [], set(), {}
    for r in layers:
        bases[r.name.split("/")[0]] = bases.get(r.name.split("/")[0], 0) + 1
    for r in layers:
        key = where.get(id(r))
        if key is None:
            n = bases[r.name] if not r.shape.steps and r.name in bases else 1
            out.append((f"{r.name} [1 of {n} records]" if n > 1 else label(r), r))
        elif key not in seen:
            seen.add(key)
            recs = groups[key]
            call, steps = key[0], recs[0].shape.steps[0][2]
            name = recs[0].name
            text = (f"{name} [{steps} steps]" if name == call or name.startswith(call + "/")
                    else f"{name} [{call}: {steps} steps]")
            out.append((text, LayerTotal(name=name, records=tuple(recs), steps=steps)))
    return out


def _positions(call, records):
    """`{(call, i): [i-th record of each step]}` of `call`'s `records`, or {} where its steps
    differ in how many records they hold or in their shapes."""
    by_step = {}
    for r in records:
        by_step.setdefault(r.shape.steps[0][1], []).append(r)
    steps = list(by_step.values())
    if len(steps) != records[0].shape.steps[0][2] or any(
            len(s) != len(steps[0]) or [_bare(x.shape) for x in s] != [
                _bare(x.shape) for x in steps[0]] for s in steps):
        return {}
    return {(call, i): [s[i] for s in steps] for i in range(len(steps[0]))}
