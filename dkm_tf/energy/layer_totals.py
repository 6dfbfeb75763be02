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
before, one row per step, the first named as the layer. Pure Python: no Keras, no TensorFlow.
"""

import dataclasses
import difflib

from dkm_tf.energy.hierarchy import HierarchyCost
from dkm_tf.energy.paper import PaperCost


@dataclasses.dataclass(frozen=True)
class LayerTotal:
    """The records of every step of one call of a `TimeDistributed` layer, summed.

    It has the attributes of a `LayerEnergy`: `macs`, `paper_total`, `hierarchy_total`,
    `paper` and `hierarchy` (their terms and traffic summed, so `paper_terms()` and
    `hierarchy_parts()` are the records' sums), `n_clusters`, ... .

    Attributes:
        name: The call's name (`td`; a second call of a TimeDistributed of T steps `td#<T+1>`,
            the name of its first step's record); in a table row (`rows`), the name of the
            row's first record (`td/cell.kernel`: that record of every step).
        records: The `LayerEnergy` records of all steps, in model order.
        steps: T, the number of steps (of all nested TimeDistributed layers: T1 · T2).
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
        words = {}
        for r in self.records:
            for key, w in r.hierarchy.traffic:
                words[key] = words.get(key, 0.0) + w
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
        out = {}
        for r in self.records:
            for k, v in r.paper_terms().items():
                out[k] = out.get(k, 0.0) + v
        return out

    def hierarchy_parts(self):
        """`{"mac", "rf", "array", "buffer", "dram"}` → energy, summed over the records."""
        out = {}
        for r in self.records:
            for k, v in r.hierarchy_parts().items():
                out[k] = out.get(k, 0.0) + v
        return out

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
        """Bits of the stored kernels: one step's (every step reads the same kernels)."""
        return sum(r.stored_weight_bits for r in self.records[:len(self.records) // self.steps])


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


def total(layers, name):
    """The `LayerTotal` of the call `name` in `layers`, or None where none is charged per
    step."""
    records = calls(layers).get(name)
    if not records:
        return None
    steps = next(t for c, _, t in records[0].shape.steps if c == name)
    return LayerTotal(name=name, records=tuple(records), steps=steps)


def unknown(name, layers, skipped):
    """The `LookupError` for a `name` of no record nor step call: why it is not charged where
    `skipped` lists it, else the closest names."""
    why = [w for n, w in skipped if n == name]
    if why:
        return UnknownLayerError(f"Layer {name!r} is not charged in this report: "
                                 f"{'; '.join(why)}")
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
    labelled with its step (`label`)."""
    groups = {}  # (call, position in its step) -> records
    for call, recs in calls([r for r in layers if r.shape.steps]).items():
        if call in {r.shape.steps[0][0] for r in recs}:  # outermost calls only
            groups.update(_positions(call, recs))
    where = {id(x): k for k, recs in groups.items() for x in recs}
    out, seen = [], set()
    for r in layers:
        key = where.get(id(r))
        if key is None:
            out.append((label(r), r))
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
