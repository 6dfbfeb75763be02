"""Keras' reference outputs for the export checks, at the batch each run of the file uses.

A model whose outputs depend on the batch (a layer mixing samples, e.g. ``x + eps x mean over
the batch``; or float reordering between batch sizes) gives other outputs for the samples one
at a time than for all of them in one call. The checks therefore compare the file's batch-1
runs with Keras' batch-1 outputs (:func:`keras_one_by_one`) and its batch-n run with Keras'
batch-n outputs (:func:`keras_outputs`): each run against Keras at its own batch. Compared
with the batch-n outputs only, an exact file's batch-1 error WAS Keras' batch noise, which a
noise floor (10x it) had to let through, and a file wrong by less than that was written
(``BatchMix(1e-2)``, every output's bias 3 % of its range off: relative 3.7e-2 under a
raised 7.05e-2; h27).
"""

from __future__ import annotations

import re

import numpy as np

from dkm_tf.export.unit_errors import NOISE_FACTOR

__all__ = ["batch_noise_note", "keras_one_by_one", "keras_outputs"]


def keras_outputs(model, inputs):
    """Flattened Keras outputs (list of arrays) for a list of input arrays, in one call.

    Raises:
        ValueError: the model cannot run the inputs (e.g. a subclassed model, whose input
            shape is not declared, given samples of another size), named as `sample_inputs`.
    """
    import tensorflow as tf  # noqa: PLC0415

    from dkm_tf.export.convert import structured_inputs  # noqa: PLC0415

    try:
        y = model(structured_inputs(model, inputs), training=False)
    except Exception as e:  # noqa: BLE001 (Keras / TF raise many types for a bad shape)
        first = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split()))[:300]
        raise ValueError(
            "Invalid value for argument `sample_inputs`. Expected inputs the model can run. "
            f"Received: shapes {[a.shape for a in inputs]}; the model raised "
            f"{type(e).__name__}: {first}") from e
    return [np.asarray(t) for t in tf.nest.flatten(y)]


def keras_one_by_one(model, inputs, reference=None):
    """Keras' outputs for ``inputs`` one sample per call (batch 1), samples stacked: the
    reference of the file's batch-1 runs. ``reference``: the outputs of one call, returned
    as they are for a single sample (then the same call), else unused.

    Raises:
        ValueError: as :func:`keras_outputs`.
    """
    n = len(inputs[0])
    if n < 2 and reference is not None:
        return reference
    per = [keras_outputs(model, [a[i:i + 1] for a in inputs]) for i in range(n)]
    return [np.concatenate([p[k] for p in per]) for k in range(len(per[0]))]


def batch_noise_note(noise, tolerance, notes):
    """Append a note naming the outputs whose Keras batch-1 vs batch-n difference ``noise``
    (one per output, ``verify.keras_noise``) is over 1 / :data:`NOISE_FACTOR` of their
    ``tolerance`` (a number or one per output): where a noise floor raised the tolerance
    before; they are now compared run by run at Keras' own batch, at their tolerance."""
    tols = np.broadcast_to(np.asarray(tolerance, np.float64), (len(noise),))
    ks = [k for k, (z, t) in enumerate(zip(noise, tols)) if NOISE_FACTOR * z > t]
    if ks:
        shown = ", ".join(f"output {k} {noise[k]:.3g}" for k in ks[:4])
        notes.append(f"Keras' outputs depend on the batch ({shown}{' ...' if len(ks) > 4 else ''}"
                     "; relative batch-1 vs batch-n difference): the file's batch-1 runs were "
                     "compared with Keras' batch-1 outputs, its batch run with Keras' batch "
                     "outputs, at the tolerance (no noise floor)")
