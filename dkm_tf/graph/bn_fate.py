"""What folding will do to each BatchNormalization, for the reports that list them.

``strip_clustering`` (and ``share_weights``, and the TFLite converter) fold a
BatchNormalization into the conv or dense layer before it, so such a layer is neither
clustered nor kept: listing it as "layer type not supported" (EfficientNetB0: 49 of them)
reads as if they were left float. The others, a pre-activation BatchNormalization after a
``Concatenate`` or an ``Add``, at a block's input or after an activation, do stay float. This
module asks :mod:`dkm_tf.graph.batchnorm` the question its fold answers (the same plan, so
the report predicts exactly what the strip does) and words both cases for every report.
"""

from __future__ import annotations

import keras

from dkm_tf.graph import batchnorm as _bn
from dkm_tf.graph.bn_wrapped import time_distributed
from dkm_tf.graph.clusterable import walk_layers

__all__ = ["STAYS_FLOAT", "batch_norm_fate", "folded_line", "split_rows", "stays_float"]

STAYS_FLOAT = "BatchNormalization stays float"


def stays_float(why):
    """The reason given for a BatchNormalization that folding leaves in the model."""
    return f"{STAYS_FLOAT} (not folded into the layer before it: {why})"


def folded_line(layer_name, bn_name, when="at strip_clustering"):
    """A report line of a BatchNormalization that is folded (not a skip)."""
    return f"  = {bn_name} (BatchNormalization): folded into {layer_name} {when}"


def _batch_norms(model):
    """The BatchNormalization layers of ``model``'s graphs, a TimeDistributed of one too."""
    return [bn for bn in walk_layers(model)
            if isinstance(time_distributed(bn)[0], keras.layers.BatchNormalization)]


def batch_norm_fate(model):
    """``(folds, stays)`` as :func:`~dkm_tf.graph.batchnorm.fold_batch_norm` would decide:
    ``folds`` maps ``id(bn)`` (its graph layer: a ``TimeDistributed`` of one) to the name of
    the layer it folds into, ``stays`` a BatchNormalization's name to why it stays float. A
    model folding refuses (statistics not finite, ``training=True`` in the graph) gives each
    one that refusal as reason."""
    if not isinstance(model, keras.Model):
        return {}, {}
    try:
        # fold_batch_norm's own plan, not a copy; a BN after a ClusterWeights (clustering a
        # clustered model) folds at strip: was "cannot fold (they stay float)"
        plan = _bn._plan(model, see_through=True)  # noqa: SLF001
    except (TypeError, ValueError) as e:
        why = f"fold_batch_norm refuses this model: {e}"
        return {}, {bn.name: why for bn in _batch_norms(model)}
    folds = {id(op): prev for op, (prev, _) in zip(plan.ops, plan.folded)}
    return folds, dict(plan.skipped)


def split_rows(model, rows):
    """Report rows ``(name, type name, reason)`` without the BatchNormalization layers that
    fold: ``(rows, folded)``; ``folded`` holds ``(layer_name, bn_name)``, and a BN that stays
    gets :func:`stays_float`'s reason."""
    bns = {bn.name: bn for bn in _batch_norms(model)}
    if not bns:
        return list(rows), []
    folds, stays = batch_norm_fate(model)
    out, folded = [], []
    for name, kind, reason in rows:
        bn = bns.get(name)
        if bn is not None and id(bn) in folds:
            folded.append((folds[id(bn)], name))
        elif bn is not None and name in stays:
            out.append((name, kind, stays_float(stays[name])))
        else:
            out.append((name, kind, reason))
    return out, folded
