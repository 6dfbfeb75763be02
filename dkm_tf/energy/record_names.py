"""Names the Keras reader makes for records, kept apart from the model's layer names.

A shared layer's second call is named `name#2`, a `TimeDistributed` layer's second step
`td#2`, ... (`keras_reader._walk`, `keras_wrapped.step_records`). Keras lets a layer be named
`td#2` too: before 2026-12-07 such a model (a TimeDistributed Dense(4) `td` over 3 steps of 8
beside a Dense(5) named `td#2`) had two records named `td#2`, its step (32 MACs) and the Dense
(120 MACs), and `EnergyReport.layer("td#2")` gave the step. The reader now keeps every layer
name of the model (`reserve`, under `RESERVED` in its name counts) and `fresh` skips them:
the steps are `td`, `td#3`, `td#4` (their step tags say which step each is) and the Dense keeps
its name.

The model's own (top-level) layers keep their names for their first calls, as
`model.get_layer(name)` names them (`fresh`'s `own`): before 2026-12-07 a layer inside a nested
model walked first took the name, a Dense(6) `d` in a nested model `nm` over 8 inputs and a
Dense(4) `d` after `nm` were `d` (48 MACs, within `nm`) and `d#2` (the outer Dense, 24), and
`EnergyReport.layer("d")` was the inner Dense; now the outer Dense is `d` and the inner `d#2`.
"""

import dataclasses
import re

RESERVED = 0  # key of the model's layer names in the reader's name counts (not a str, no tuple)
OWN = 1  # key of `(names of the model's own layers, those given to their first call)`


def reserve(model):
    """`{RESERVED: frozenset, OWN: (frozenset, set())}`: the names of every layer in `model`,
    at any depth, and of its own (top-level) layers (the starting name counts of a walk of
    `model`)."""
    try:
        layers = list(model._flatten_layers(include_self=True))  # noqa: SLF001 - every depth
    except (AttributeError, TypeError):
        layers = [model, *getattr(model, "layers", [])]
    own = frozenset(x.name for x in getattr(model, "layers", None) or [])
    return {RESERVED: frozenset(x.name for x in layers), OWN: (own, set())}


def fresh(used, base, own=False):
    """The name of the next walk of `base`: `base` the first time, then `base#n` with n the
    walk's count in `used` (raised), skipping the names of the model's layers (`reserve`).
    The name of one of the model's own layers (`OWN`) is its first call's (`own`: a call in
    the model's own graph), never a nested model's layer's (that one is `base#n`)."""
    taken = used.get(RESERVED, frozenset())
    names, given = used.get(OWN, (frozenset(), set()))
    if own and base in names and base not in given:
        given.add(base)
        return base
    while True:
        used[base] = n = used.get(base, 0) + 1
        name = base if n == 1 else f"{base}#{n}"
        if n == 1 and base not in names or n > 1 and name not in taken:
            return name


def calls_renamed(records, used):
    """`records` read on their own (a traced subclassed model nested in a Functional one),
    each call's name `fresh` in the outer walk's counts `used`, all of a call's records
    renamed together: a record's call is its name up to the first `/` (`d`, `d#2` = the
    traced reader's second call of `d`, `act` of `act/2`; TensorFlow traces no layer named
    with a `#`). Before 2026-12-07 each record was renamed on its own: only the record named
    `d` moved (`d#2`), its ops `d/selu`, ... kept their names and `EnergyReport.layer("d")` of
    the outer Dense summed them (paper 382.25 for its own 223.53); two calls of `d` became
    `d#2`, `d#2`. A `TimeDistributed` call's steps (`LayerShape.steps`) are tagged with its
    new name: a TimeDistributed `td` inside beside a top-level `td` had steps `td#2` twice and
    `EnergyReport.layer("td")` summed both layers (120 MACs for the top-level one's 24)."""
    names, out = {}, []
    for r in records:
        call = r.name.split("/")[0]
        if call not in names:
            second = re.fullmatch(r"(.+)#\d+", call)
            base = second.group(1) if second else call
            names[call] = fresh(used, base)
        steps = tuple((names.get(c, c), k, t) for c, k, t in r.steps)  # a TimeDistributed's
        out.append(dataclasses.replace(r, name=names[call] + r.name[len(call):], steps=steps))
    return out


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

