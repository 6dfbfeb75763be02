"""Per-layer energy records and the report returned by `dkm_tf.energy.estimate`."""

import dataclasses
import os

from dkm_tf.core.files import atomic_path
from dkm_tf.energy import constants, layer_totals

PAPER_TERMS = ("compute", "weights", "activations")
HIERARCHY_PARTS = ("mac",) + tuple(reversed(constants.LEVELS))


@dataclasses.dataclass(frozen=True)
class LayerEnergy:
    """Energy of one layer under both models.

    Attributes:
        shape: The `LayerShape` the numbers come from.
        paper: `PaperCost` (paper metric, MAC units at the report's bit widths).
        hierarchy: `HierarchyCost` (memory-hierarchy model, units of one 16-bit MAC).
        n_clusters: K if the kernel is weight-shared, else `None`.
        unit_dim: d if weight-shared, else `None`.
        index_bits: Bits per index charged to the paper metric (0 for `index_cost="none"`).
        kept_fraction: Fraction of weights kept after pruning (1 = dense).
        unique_fraction: Fraction of unit products computed (1 = conservative).
        stored_weight_bits: Bits of the stored kernel (codebook + indices when shared).
    """

    shape: object
    paper: object
    hierarchy: object
    n_clusters: int | None = None
    unit_dim: int | None = None
    index_bits: float = 0.0
    kept_fraction: float = 1.0
    unique_fraction: float = 1.0
    stored_weight_bits: float = 0.0

    @property
    def name(self):
        """Record name."""
        return self.shape.name

    @property
    def macs(self):
        """Dense MACs per image (before pruning)."""
        return self.shape.macs

    @property
    def paper_total(self):
        """Paper metric E_l in MAC units."""
        return self.paper.total

    @property
    def hierarchy_total(self):
        """Hierarchy model E_l in units of one 16-bit MAC."""
        return self.hierarchy.total

    def paper_terms(self):
        """`{"compute", "weights", "activations"}` → MAC units."""
        return {t: getattr(self.paper, t) for t in PAPER_TERMS}

    def hierarchy_parts(self):
        """`{"mac", "rf", "array", "buffer", "dram"}` → energy."""
        parts = {"mac": self.hierarchy.compute}
        parts.update({lv: self.hierarchy.energy(level=lv) for lv in HIERARCHY_PARTS[1:]})
        return parts


@dataclasses.dataclass(frozen=True)
class EnergyRatio:
    """Energy of a baseline divided by energy of a model (> 1 means the model saves).

    Attributes:
        paper: The ratio of the paper metric's totals (Deep k-Means §3, eqs. 5-7).
        hierarchy: The ratio of the memory-hierarchy model's totals.
    """

    paper: float
    hierarchy: float


@dataclasses.dataclass(frozen=True)
class EnergyReport:
    """Per-layer energy of a model under the paper metric and the hierarchy model.

    Attributes:
        layers: Tuple of `LayerEnergy`, in model order.
        skipped: Tuple of `(name, reason)` for layers not modelled.
        bits_w, bits_x: Bit widths used.
        index_cost: "none", "log2" or "entropy" (paper metric; the hierarchy model always
            moves indices, at log2 K bits unless "entropy").
        compute_model: "conservative" or "unique_products".
        model_name: Name of the model or file.
        baseline: Report of the same model without compression, or `None` when the model
            was estimated without compression information.
        notes: Strings printed under the table (e.g. where the palettes came from).
    """

    layers: tuple
    skipped: tuple = ()
    bits_w: float = 16
    bits_x: float = 16
    index_cost: str = "none"
    compute_model: str = "conservative"
    model_name: str = ""
    baseline: "EnergyReport | None" = None
    notes: tuple = ()

    @property
    def macs(self):
        """Total dense MACs per image."""
        return sum(layer.macs for layer in self.layers)

    @property
    def paper_total(self):
        """Total paper metric in MAC units."""
        return sum(layer.paper_total for layer in self.layers)

    @property
    def hierarchy_total(self):
        """Total hierarchy-model energy in units of one 16-bit MAC."""
        return sum(layer.hierarchy_total for layer in self.layers)

    def paper_terms(self):
        """Totals of the three paper terms."""
        return {t: sum(getattr(layer.paper, t) for layer in self.layers) for t in PAPER_TERMS}

    def hierarchy_parts(self):
        """Totals of the hierarchy model by MAC and memory level."""
        out = dict.fromkeys(HIERARCHY_PARTS, 0.0)
        for layer in self.layers:
            for k, v in layer.hierarchy_parts().items():
                out[k] += v
        return out

    def layer(self, name):
        """The cost of the layer (call) or record named `name`.

        Args:
            name: A layer call's name (`conv`; a shared layer's second call `fc#2`; a
                `TimeDistributed` layer's call charged per step, `td`, a second call of T
                steps `td#<T+1>`; a nested model's call) or a record's name
                (`lstm/cell.kernel`; an op of a layer charged as several, `act/2`). A name of
                the model's own (top-level) layer is that layer's first call, as
                `model.get_layer(name)`; a layer inside a nested model named alike is
                `name#n`, its records' `LayerShape.within` naming the nested call.

        Returns:
            For a call charged as several records, a `LayerTotal` of them all (`layer_totals`:
            a `TimeDistributed`'s steps, a nested model's records, a layer's `name` and
            `name/...` records, as a `Dense(activation="silu")`'s `d` and `d/silu`, an LSTM's
            `r/cell.kernel`, ..., a Lambda's ops `lam`, `lam/2`, ...); else the `LayerEnergy`
            named `name` (each record by its own name: `record`).

        Raises:
            KeyError: (also a `ValueError`) where nothing is named `name`, naming the close
                names, the records a layer is charged as (a TimeDistributed's inner layer),
                or why it is not charged where `skipped` lists it.
            ValueError: Where `name` names two things (a record named as a call beside it).
            TypeError: If `name` is not a str.
        """
        if not isinstance(name, str):
            raise TypeError(f"Invalid type for argument `name`. Expected a str (a layer name). "
                            f"Received: name={name!r} of type {type(name).__name__}")
        return layer_totals.total(self.layers, name) or self.record(name)

    def record(self, name):
        """The `LayerEnergy` whose record name is `name` (`td` of a `TimeDistributed` Dense:
        its first step's); raises `KeyError` (`layer`) if absent.

        Args:
            name: The record's name (`[x.name for x in report.layers]`).

        Raises:
            ValueError: Where two records have that name (a report built by hand).
        """
        found = [x for x in self.layers if x.name == name]
        if len(found) > 1:
            raise ValueError(f"Record name {name!r} is ambiguous: {len(found)} records have it "
                             f"({[(x.shape.op, x.macs) for x in found]}). Read `report.layers`.")
        if found:
            return found[0]
        raise layer_totals.unknown(name, self.layers, self.skipped)

    def ratio_vs(self, baseline):
        """Energy reduction factor against `baseline` (baseline energy / this energy).

        Args:
            baseline: Another `EnergyReport`, normally of the uncompressed model.

        Returns:
            An `EnergyRatio` for both models.
        """
        if not isinstance(baseline, EnergyReport):
            raise TypeError(
                "Invalid value for argument `baseline`. Expected an EnergyReport. "
                f"Received: baseline={baseline!r}"
            )
        return EnergyRatio(paper=_div(baseline.paper_total, self.paper_total),
                           hierarchy=_div(baseline.hierarchy_total, self.hierarchy_total))

    @property
    def reduction(self):
        """`ratio_vs(self.baseline)`, or `None` without a baseline."""
        return None if self.baseline is None else self.ratio_vs(self.baseline)

    def to_dict(self):
        """A JSON-ready dict of totals and per-record rows (`step`: `[call, k, T]` for a
        step of a `TimeDistributed` call, else None), and `layer_totals`: each call charged as
        several records summed (`layer`: a TimeDistributed's steps, a nested model's call, a
        layer's `name` and `name/...` records), with `within`, the listed calls holding it
        (outermost first; `[]` for an outermost one): sum only the rows whose `within` is
        empty, or a TimeDistributed model's inner call is counted twice."""
        rows = []
        for layer in self.layers:
            step = layer.shape.steps[0] if layer.shape.steps else None  # of a TimeDistributed
            row = {"name": layer.name, "step": None if step is None else list(step),
                   "op": layer.shape.op, "kind": layer.shape.kind,
                   "macs": layer.macs, "n_weights": layer.shape.n_weights,
                   "n_clusters": layer.n_clusters, "kept_fraction": layer.kept_fraction,
                   "paper_total": layer.paper_total, "hierarchy_total": layer.hierarchy_total}
            row.update({f"paper_{k}": v for k, v in layer.paper_terms().items()})
            row.update({f"hierarchy_{k}": v for k, v in layer.hierarchy_parts().items()})
            rows.append(row)
        red = self.reduction
        return {"model": self.model_name, "bits_w": self.bits_w, "bits_x": self.bits_x,
                "index_cost": self.index_cost, "compute_model": self.compute_model,
                "macs": self.macs, "paper_total": self.paper_total,
                "hierarchy_total": self.hierarchy_total,
                "reduction": None if red is None else dataclasses.asdict(red),
                "layers": rows, "layer_totals": [dict(_total_row(x), within=within) for
                                                 _, x, within in layer_totals.groups(
                                                     self.layers)],
                "skipped": [list(s) for s in self.skipped],
                "notes": list(self.notes)}

    def summary(self):
        """A plain-text table: one row per record (a `TimeDistributed` call's records summed
        over its steps, `td [3 steps]`: `layer_totals.rows`), totals, reduction and skipped
        layers."""
        base = None if self.baseline is None else dict(layer_totals.rows(self.baseline.layers))
        head = ["layer", "op", "MACs", "K", "paper:comp", "paper:W", "paper:X", "paper",
                "hier:DRAM", "hier"]
        if base is not None:
            head += ["x paper", "x hier"]
        rows = [head]
        for label, x in layer_totals.rows(self.layers):  # a TimeDistributed's steps summed
            t = x.paper_terms()
            row = [label, x.shape.op, _num(x.macs), "-" if x.n_clusters is None else
                   str(x.n_clusters), _num(t["compute"]), _num(t["weights"]),
                   _num(t["activations"]), _num(x.paper_total),
                   _num(x.hierarchy.energy(level="dram")), _num(x.hierarchy_total)]
            if base is not None:
                b = base.get(label)
                row += ["-", "-"] if b is None else [
                    f"{_div(b.paper_total, x.paper_total):.2f}",
                    f"{_div(b.hierarchy_total, x.hierarchy_total):.2f}"]
            rows.append(row)
        t = self.paper_terms()
        total = ["TOTAL", "", _num(self.macs), "", _num(t["compute"]), _num(t["weights"]),
                 _num(t["activations"]), _num(self.paper_total),
                 _num(self.hierarchy_parts()["dram"]), _num(self.hierarchy_total)]
        red = self.reduction
        if red is not None:
            total += [f"{red.paper:.2f}", f"{red.hierarchy:.2f}"]
        rows.append(total)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        fmt = [lambda s, w: s.ljust(w)] * 2 + [lambda s, w: s.rjust(w)] * (len(head) - 2)
        title = (f"Energy estimate: {self.model_name or '<model>'} (B_w={self.bits_w}, "
                 f"B_x={self.bits_x}, index_cost={self.index_cost!r}, "
                 f"compute_model={self.compute_model!r})")
        legend = ("paper = Deep k-Means metric in MAC units (eqs. 5-7, 6x normalisation); "
                  "hier = Eyeriss hierarchy model in 16-bit-MAC units")
        lines = [title, legend]
        for i, r in enumerate(rows):
            if i == len(rows) - 1:
                lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
            lines.append("  ".join(f(s, w) for f, s, w in zip(fmt, r, widths)).rstrip())
        if red is not None:
            lines.append(f"Reduction vs uncompressed: paper {red.paper:.3f}x, "
                         f"hierarchy {red.hierarchy:.3f}x")
        lines.extend(f"Note: {n}" for n in self.notes)
        if self.skipped:
            lines.append(f"Skipped ({len(self.skipped)}): " +
                         "; ".join(f"{n} ({why})" for n, why in self.skipped))
        return "\n".join(lines)

    def __repr__(self):
        red = self.reduction
        red_s = "" if red is None else (f", reduction=(paper={red.paper:.3g}x, "
                                        f"hierarchy={red.hierarchy:.3g}x)")
        return (f"EnergyReport(model={self.model_name!r}, layers={len(self.layers)}, "
                f"skipped={len(self.skipped)}, macs={self.macs:.4g}, "
                f"paper={self.paper_total:.4g}, hierarchy={self.hierarchy_total:.4g}{red_s})")

    def plot(self, path):
        """Writes a PNG of per-layer stacked bars for both models (atomically).

        Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). The file
        is written to a temporary file in the same directory and moved into place with
        `os.replace`.

        Args:
            path: Destination `.png` path.

        Returns:
            `path`.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        table = layer_totals.rows(self.layers)  # a TimeDistributed's steps summed
        names = [label for label, _ in table]
        n = max(len(names), 1)
        fig = Figure(figsize=(min(4 + 0.35 * n, 40), 7.5))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 1, sharex=True)
        series = [("paper metric (MAC units)", PAPER_TERMS, [x.paper_terms() for _, x in table]),
                  ("hierarchy model (16-bit MAC units)", HIERARCHY_PARTS,
                   [x.hierarchy_parts() for _, x in table])]
        xs = list(range(len(names)))
        for ax, (title, keys, values) in zip(axes, series):
            bottom = [0.0] * len(names)
            for key in keys:
                heights = [v[key] for v in values]
                ax.bar(xs, heights, bottom=bottom, label=key, width=0.8)
                bottom = [b + h for b, h in zip(bottom, heights)]
            ax.set_ylabel(title, fontsize=8)
            ax.legend(fontsize=7, loc="upper right")
        axes[1].set_xticks(xs)
        axes[1].set_xticklabels(names, rotation=90, fontsize=6)
        fig.suptitle(f"Energy per layer: {self.model_name or 'model'}", fontsize=10)
        fig.tight_layout()
        path = os.fspath(path)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        return path


def _total_row(x):
    """`to_dict`'s row of a `LayerTotal` `x`."""
    return {"name": x.name, "steps": x.steps, "records": [r.name for r in x.records],
            "macs": x.macs, "n_clusters": x.n_clusters, "paper_total": x.paper_total,
            "hierarchy_total": x.hierarchy_total}


def _div(a, b):
    return a / b if b else float("inf")


def _num(v):
    v = float(v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3f}{unit}"
    return f"{v:.3g}" if v != int(v) else str(int(v))
