"""The walk over a model's layers that the clustering entry points and the untracked-layer
search share (`clusterable.walk_layers`, `untracked`)."""

from __future__ import annotations

__all__ = ["walk_layers"]


def walk_layers(model):
    """Every layer below ``model`` (nested models included), depth first, each once: shared
    layers once, nested models before their own layers. Only the public ``layers`` attribute
    is read, so a wrapper's inner layer is not listed."""
    seen, out = set(), []

    def walk(layer):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                walk(sub)

    walk(model)
    return out
