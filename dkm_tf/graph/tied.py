"""Tied weights: a clusterable kernel read by a layer other than its own.

A tied output projection reading the embedding table (``ops.matmul(h,
ops.transpose(emb.embeddings))`` in a custom layer or a ``Lambda``), a decoder reading its
encoder's kernel, a layer holding another layer of the model as an attribute: in each, one
variable feeds two layers of the graph. The entry points that copy the model cannot keep
such a tie, and the clustering wrapper cannot reach the other reader:

* a copy is rebuilt layer by layer from configs: a ``Lambda``'s closure still reads the
  *original* model's float variable (the copy's tied head never sees the clustered table: on
  a 50 x 16 tied LM, 0.005 off the outputs of the kernel it claims to use, after strip too), a
  layer holding another one gets its own fresh copy of it, trained on its own (0.13-0.36 off),
  and a layer holding a non-serialisable reference cannot be copied at all;
* :class:`~dkm_tf.ClusterWeights` replaces the kernel inside its own call only: any other
  reader sees the float variable while training and the shared values after strip.

:func:`check_no_tied_reads` finds such readers before any work: statically (another layer of
the graph tracks the variable among its weights) and by one eager call of every ``Lambda``
and user-defined layer on zeros shaped like its graph inputs, inside a scope that records
each variable read (nothing is updated; :func:`dkm_tf.graph.untracked.variables_read`). A
layer that calls another one of the model itself (the same layer object at two places, e.g.
keras_hub's ``ReversibleEmbedding`` called with ``reverse=True``) is no tie: one layer, one
wrapper, both uses clustered.
"""

from __future__ import annotations

__all__ = ["TIED_WAY_OUT", "check_no_tied_reads", "tied_reads"]

TIED_WAY_OUT = (
    "Either make both uses one layer called twice (e.g. an Embedding subclass whose "
    "call(inputs, reverse=True) returns ops.matmul(inputs, ops.transpose(self.embeddings)), "
    "as keras_hub's ReversibleEmbedding: one wrapper clusters both uses), or cluster after "
    "training with dkm_tf.share_weights(model, inplace=True), which writes the shared values "
    "into the variable itself so that every reader sees them (dkm_tf.attach_regularizer + fit "
    "first to fine-tune towards them).")


def _owners(layers):
    """``{id(variable): (owner layer, attr)}`` of every clusterable weight of ``layers``."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph import clusterable as clusterable_lib  # noqa: PLC0415

    out = {}
    for layer in layers:
        if isinstance(layer, keras.Model) or not layer.built \
                or not clusterable_lib.is_clusterable(layer):
            continue
        try:
            weights = clusterable_lib.clusterable_weights(layer)
        except (TypeError, ValueError):  # refused later, by the entry point, with its message
            continue
        for attr, var, _ in weights:
            out.setdefault(id(var), (layer, attr))
    return out


def tied_reads(model):
    """Every clusterable weight of ``model`` read by another layer of its graph.

    Returns:
        A list of ``(owner_name, attr, reader_name, how)``; ``how`` is ``"tracks"`` (the
        reader lists the variable among its weights) or ``"reads"`` (its call reads it).
    """
    import keras  # noqa: PLC0415

    from dkm_tf.graph import clusterable as clusterable_lib  # noqa: PLC0415
    from dkm_tf.graph.untracked import audited, variables_read  # noqa: PLC0415 (the one call)

    layers = [model, *clusterable_lib.walk_layers(model)]
    owners = _owners(layers)
    found, seen = [], set()
    in_graph = {id(model)}  # layers of the model's graphs, nested models' included
    for layer in layers:
        if isinstance(layer, keras.Model) and id(layer) in in_graph:
            in_graph |= {id(x) for x in layer.layers}

    def add(var_id, reader, how):
        owner, attr = owners[var_id]
        key = (id(owner), attr, id(reader))
        subs = reader._flatten_layers(include_self=False)  # noqa: SLF001
        if id(owner) not in in_graph and any(x is owner for x in subs):
            return  # the reader's own sublayer (listed in a public `layers`), not a tie
        if owner is not reader and key not in seen:
            seen.add(key)
            found.append((owner.name, attr, reader.name, how))

    for layer in layers:
        if isinstance(layer, keras.Model):
            continue
        for var in layer.weights:
            if id(var) in owners:
                add(id(var), layer, "tracks")
        if audited(layer):
            for node in getattr(layer, "_inbound_nodes", None) or []:
                for var_id in variables_read(layer, node):
                    if var_id in owners:
                        add(var_id, layer, "reads")
    return found


CLONE_WHY = (
    "{entry} copies the model layer by layer, which cannot keep a tie: the reader's copy "
    "reads the original model's float variable (a Lambda's closure) or a second copy of the "
    "weight of its own (trained, stored and exported apart from the clustered one), or cannot "
    "be copied at all{extra}.")


def check_no_tied_reads(model, entry, why):
    """Raise ``ValueError`` if a clusterable weight of ``model`` is read outside its layer.

    Args:
        model: the model given to ``entry``.
        entry: the entry point's name, for the message.
        why: what ``entry`` would do wrong with such a reader (one sentence).
    """
    found = tied_reads(model)
    if not found:
        return
    ties = "; ".join(
        f"{owner!r}.{attr} is {'tracked' if how == 'tracks' else 'read'} by layer {reader!r}"
        for owner, attr, reader, how in found)
    raise ValueError(
        f"{entry}: a clustered weight would be read outside its own layer (tied weights): "
        f"{ties}. {why} {TIED_WAY_OUT}")
