"""`energy.estimate(model, palettes=...)`'s palette check in slabs (bench/results/scale19.md).

`check_palettes` compared `decode()` with the stored weight as whole float64 arrays (8x the
kernel's bytes on a 4096 x 4096 Dense). Now one slab at a time, with the same float64
comparison and tolerance (|diff| <= 1e-6 * max |w|): the reference below is the old code, and
both give the same accepted palettes and the same reasons.
"""

import dataclasses
import tracemalloc

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.energy import stored


def _old_check(model, palettes):
    """The comparison of the code before (check_palettes, one layer per name), verbatim."""
    accepted, rejected = [], []
    for p in palettes:
        w = np.asarray(keras.ops.convert_to_numpy(
            getattr(model.get_layer(p.layer_name), p.weight_name)), np.float64)
        dec = np.asarray(p.decode(), np.float64)
        if w.shape != dec.shape:
            rejected.append((f"{p.layer_name}/{p.weight_name}",
                             f"it decodes to shape {dec.shape}, the weight has shape "
                             f"{w.shape}"))
            continue
        diff = np.abs(w - dec)
        if np.all(diff <= 1e-6 * max(float(np.max(np.abs(w), initial=0.0)), 1e-30)):
            accepted.append(p)
            continue
        rejected.append((f"{p.layer_name}/{p.weight_name}",
                         f"its decode() differs from the stored weight in "
                         f"{int(np.sum(diff > 0)):,} of {w.size:,} values (max |diff| "
                         f"{float(diff.max()):.3g}); the weight holds {np.unique(w).size:,} "
                         f"distinct values, the palette K={p.n_clusters} (d={p.unit_dim})"))
    return accepted, rejected


@pytest.fixture(scope="module")
def shared():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((96,)), keras.layers.Dense(700, name="d1"),
                              keras.layers.Dense(5, name="d2")])
    return dkm_tf.share_weights(model, 8)


def _set(layer, fn):
    k = layer.kernel
    layer.kernel.assign(fn(np.array(k.numpy())))


@pytest.mark.parametrize("case", ["exact", "within", "beyond", "nan", "inf", "zero", "shape"])
def test_same_verdicts_and_reasons_as_the_old_code(shared, case, monkeypatch):
    monkeypatch.setattr(stored, "_slabs", _small_slabs, raising=False)  # many slabs
    model = keras.models.clone_model(shared.model)
    model.set_weights(shared.model.get_weights())
    d1 = model.get_layer("d1")
    top = float(np.max(np.abs(d1.kernel.numpy())))
    pals = list(shared.palettes)
    if case == "within":  # exactly representable offsets under the tolerance stay accepted
        _set(d1, lambda k: k + np.float32(2.0 ** -22 * top) * (k > 0))
    elif case == "beyond":
        _set(d1, lambda k: k + np.float32(4e-6 * top) * (np.arange(k.size) % 9 == 0).reshape(
            k.shape))
    elif case == "nan":
        _set(d1, lambda k: np.where(np.arange(k.size).reshape(k.shape) == 5000, np.nan, k))
    elif case == "inf":
        _set(d1, lambda k: np.where(np.arange(k.size).reshape(k.shape) == 7, np.inf, k))
    elif case == "zero":
        _set(d1, np.zeros_like)
    elif case == "shape":
        pals[1] = dataclasses.replace(pals[1], layer_name="d1")
    acc, rej = stored.check_palettes(model, pals)
    old_acc, old_rej = _old_check(model, pals)
    assert [p.layer_name for p in acc] == [p.layer_name for p in old_acc]
    assert rej == old_rej
    assert (case in ("exact", "within", "inf")) == (len(acc) == 2)  # inf: tolerance inf


def _small_slabs(a, b, block=1000):
    yield from _orig_slabs(a, b, block)


_orig_slabs = getattr(stored, "_slabs", None)  # None: the old code


def test_check_palettes_memory():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, name="big")])
    out = dkm_tf.share_weights(model, 16)
    nbytes = 1024 * 1024 * 4
    tracemalloc.start()
    try:
        acc, rej = stored.check_palettes(out.model, out.palettes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(acc) == 1 and not rej
    # decode() (float32) and the stored weight: 3.0x; the old code took 8.0x
    assert peak / nbytes < 4.5, f"{peak / nbytes:.2f}x the kernel's bytes (was 8.0x)"
