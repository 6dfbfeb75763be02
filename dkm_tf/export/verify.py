"""Run a ``.tflite`` in the LiteRT interpreters and compare it with the Keras model.

Errors are reported as ``max |tflite - keras| / max |keras|`` over all outputs and samples
("relative to the output range"), which is meaningful for logits, probabilities and maps alike.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

__all__ = ["INTERPRETERS", "Comparison", "ExportVerificationError", "compare",
           "keras_outputs", "make_interpreter", "run_tflite"]

INTERPRETERS = ("litert", "tflite", "tflm")


class ExportVerificationError(ValueError):
    """The written model disagrees with the Keras model beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Agreement between one interpreter and Keras.

    Attributes:
        interpreter: ``"litert"`` (``ai_edge_litert``), ``"tflite"`` (``tf.lite``) or ``"tflm"``.
        max_abs_error: largest absolute difference over outputs and samples.
        rel_error: ``max_abs_error / max |keras output|``.
        tolerance: the allowed ``rel_error``.
        n_samples: samples compared.
    """

    interpreter: str
    max_abs_error: float
    rel_error: float
    tolerance: float
    n_samples: int

    @property
    def ok(self):
        return bool(self.rel_error <= self.tolerance)

    def to_dict(self):
        return {**dataclasses.asdict(self), "ok": self.ok}


def litert_available():
    """True when the ``ai_edge_litert`` package (the ``[litert]`` extra) is importable."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def default_interpreters():
    """``("litert", "tflite")``, or ``("tflite",)`` without the ``[litert]`` extra."""
    return ("litert", "tflite") if litert_available() else ("tflite",)


def make_interpreter(kind, content, threads=1):
    """A ready (tensors allocated) interpreter of ``kind`` for the model bytes."""
    if kind == "litert":
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    elif kind == "tflite":
        import tensorflow as tf  # noqa: PLC0415

        Interpreter = tf.lite.Interpreter  # noqa: N806
    else:
        raise ValueError(f"Invalid value for argument `kind`. Expected one of "
                         f"{list(INTERPRETERS[:2])}. Received: kind={kind!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation warning
        it = Interpreter(model_content=bytes(content), num_threads=threads)
    it.allocate_tensors()
    return it


def keras_outputs(model, inputs):
    """Flattened Keras outputs (list of arrays) for a list of input arrays."""
    import tensorflow as tf  # noqa: PLC0415

    y = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
    return [np.asarray(t) for t in tf.nest.flatten(y)]


def run_tflite(content, inputs, kind="litert"):
    """Outputs (list of arrays, samples stacked) of the ``.tflite`` for each sample."""
    n = len(inputs[0])
    if kind == "tflm":
        from tflite_micro import runtime  # noqa: PLC0415

        # decoded weights live in the arena: give it room for ~10x the compressed size
        it = runtime.Interpreter.from_bytes(bytes(content),
                                            arena_size=max(40 * len(content), 1 << 24))
        outs = []
        for i in range(n):
            for j, a in enumerate(inputs):
                it.set_input(a[i:i + 1], j)
            it.invoke()
            outs.append([np.array(it.get_output(k)) for k in range(_n_outputs(content))])
    else:
        it = make_interpreter(kind, content)
        runner = it.get_signature_runner()
        outs = []
        for i in range(n):
            res = runner(**{f"input_{j}": a[i:i + 1] for j, a in enumerate(inputs)})
            outs.append([np.array(res[f"output_{k}"]) for k in range(len(res))])
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def _n_outputs(content):
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    return len(FlatModel.from_bytes(content).graph.outputs)


def compare(reference, content, inputs, kind, tolerance):
    """Run ``content`` in interpreter ``kind`` and compare with ``reference`` outputs."""
    got = run_tflite(content, inputs, kind)
    if len(got) != len(reference):
        raise ExportVerificationError(f"The .tflite has {len(got)} outputs, the Keras model "
                                      f"{len(reference)}.")
    err = max(float(np.max(np.abs(g.reshape(r.shape) - r))) if r.size else 0.0
              for g, r in zip(got, reference))
    scale = max(float(np.max(np.abs(r))) if r.size else 0.0 for r in reference)
    return Comparison(kind, err, err / max(scale, 1e-30), float(tolerance), len(inputs[0]))
