"""Top-1 reading of class-score outputs, for the int8 agreement check of
:mod:`dkm_tf.export.verify`.

An int8 file is refused when its arg-max agrees with Keras' on fewer than ``min_top1`` of the
samples. That check means something only when the samples separate the classes: Keras' own
margin between its best and second-best score must exceed what quantization moves the
outputs by. An untrained ``keras.applications`` model gives every input nearly the same
scores (MobileNetV2, alpha 0.35, 32x32: median margin 0.0034 against an int8 error of
0.0069), so any arg-max flips; :func:`margin_hint` says so in the refusal.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_score_outputs", "margin_hint", "top1_agreement", "top1_margin"]


def class_score_outputs(reference):
    """Indices of the outputs read as class scores: shaped (samples, classes >= 2), and when
    the model has several outputs only rows of probabilities (>= 0, summing to 1: a softmax
    head), since the arg-max of a detector's box or landmark head means nothing."""
    found = [k for k, r in enumerate(reference) if r.ndim == 2 and r.shape[1] >= 2 and len(r)]
    if len(reference) > 1:
        found = [k for k in found if np.all(reference[k] >= 0)
                 and np.allclose(reference[k].sum(-1), 1.0, atol=1e-3)]
    return found


def top1_agreement(got, reference):
    """Lowest arg-max agreement over the :func:`class_score_outputs`; NaN if none."""
    rates = [float(np.mean(np.argmax(got[k], -1) == np.argmax(reference[k], -1)))
             for k in class_score_outputs(reference)]
    return min(rates) if rates else float("nan")


def top1_margin(reference):
    """Keras' own median (over samples) of top-1 minus top-2 score, the lowest over the
    :func:`class_score_outputs`; NaN if none."""
    margins = []
    for k in class_score_outputs(reference):
        top2 = np.sort(np.asarray(reference[k], np.float64), axis=-1)[:, -2:]
        margins.append(float(np.median(top2[:, 1] - top2[:, 0])))
    return min(margins) if margins else float("nan")


def margin_hint(comparison):
    """The sentence a refusal adds when Keras' median top-1 margin is below the measured
    error (the samples do not separate the classes); "" otherwise."""
    c = comparison
    if np.isnan(c.top1_margin) or np.isnan(c.top1_agreement) \
            or not c.top1_agreement < c.min_top1 or not c.top1_margin < c.max_abs_error:
        return ""
    return (f". Keras' own top-1 margin (median {c.top1_margin:.3g}) is below the error "
            f"({c.max_abs_error:.3g}): the samples do not separate the classes (an untrained "
            "model, or inputs far from the data); pass real sample_inputs.")
