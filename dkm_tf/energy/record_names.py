"""Names the Keras reader makes for records, kept apart from the model's layer names.

A shared layer's second call is named `name#2`, a `TimeDistributed` layer's second step
`td#2`, ... (`keras_reader._walk`, `keras_wrapped.step_records`). Keras lets a layer be named
`td#2` too: before 2026-12-07 such a model (a TimeDistributed Dense(4) `td` over 3 steps of 8
beside a Dense(5) named `td#2`) had two records named `td#2`, its step (32 MACs) and the Dense
(120 MACs), and `EnergyReport.layer("td#2")` gave the step. The reader now keeps every layer
name of the model (`reserve`, under `RESERVED` in its name counts) and `fresh` skips them:
the steps are `td`, `td#3`, `td#4` (their step tags say which step each is) and the Dense keeps
its name.
"""

import dataclasses
import re

RESERVED = 0  # key of the model's layer names in the reader's name counts (not a str, no tuple)


def reserve(model):
    """`{RESERVED: frozenset}` of the names of every layer in `model`, at any depth (the
    starting name counts of a walk of `model`)."""
    try:
        layers = list(model._flatten_layers(include_self=True))  # noqa: SLF001 - every depth
    except (AttributeError, TypeError):
        layers = [model, *getattr(model, "layers", [])]
    return {RESERVED: frozenset(x.name for x in layers)}


def fresh(used, base):
    """The name of the next walk of `base`: `base` the first time, then `base#n` with n the
    walk's count in `used` (raised), skipping the names of the model's layers (`reserve`)."""
    taken = used.get(RESERVED, frozenset())
    while True:
        used[base] = n = used.get(base, 0) + 1
        name = base if n == 1 else f"{base}#{n}"
        if n == 1 or name not in taken:
            return name


def within(records, call):
    """`records` of the nested model's call named `call`, that name put first in their
    `within` (`LayerShape.within`: what `EnergyReport.layer(call)` sums)."""
    return [dataclasses.replace(r, within=(call,) + r.within) for r in records]


def tag_within(shapes, call, walk):
    """Runs `walk()`, which appends a nested model's records to `shapes`, and tags them with
    `call` (`within`)."""
    start = len(shapes)
    walk()
    shapes[start:] = within(shapes[start:], call)


def ops_apart(records, name, used):
    """`records` of the layer call `name`, its ops named `name#1`, `name#2`, ... (an
    `Activation("selu")`'s three, a `LayerNormalization`'s `name#2`, ...) renamed, in order,
    past the model's layer names (`reserve`): before 2026-12-07 an `Activation("selu",
    name="act")` beside a Dense named `act#2` had two records `act#2` (`act#1`, `act#2`,
    `act#3`: now `act#1`, `act#3`, `act#4`) and `EnergyReport.layer("act#2")` raised."""
    taken = used.get(RESERVED, frozenset())
    op = re.compile(re.escape(name) + r"#(\d+)")
    if not any(op.fullmatch(r.name) and r.name in taken for r in records):
        return records
    out, k = [], 0
    for r in records:
        if (m := op.fullmatch(r.name)) is not None:
            k = max(k + 1, int(m.group(1)))
            while f"{name}#{k}" in taken:
                k += 1
            r = dataclasses.replace(r, name=f"{name}#{k}")
        out.append(r)
    return out
