"""Export clustered Keras models to TFLite / LiteRT and TFLite Micro, verified.

``to_tflite`` writes one format; ``export_all`` writes several side by side (with optional
latency); ``inspect_tflite`` shows how a file stores its weights; ``benchmark_latency`` times
models interleaved. Importing this package does not import TensorFlow.

Example:
    >>> import dkm_tf  # doctest: +SKIP
    >>> report = dkm_tf.export.to_tflite(plain, "m.tflite", format="palettized",
    ...                                  palettes=palettes, sample_inputs=x[:8])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from dkm_tf.export.export_all import EXPORT_TARGETS, ExportReports, export_all
from dkm_tf.export.inspect import TFLiteInspection, inspect_tflite
from dkm_tf.export.latency import benchmark_latency
from dkm_tf.export.palettize import DECODE_MODES
from dkm_tf.export.rewrite import TFLiteFormatError
from dkm_tf.export.tflite import (
    DEFAULT_TOLERANCE,
    FORMATS,
    INT8_MIN_TOP1,
    INT8_MODES,
    ExportReport,
    check_palettes,
    to_tflite,
)
from dkm_tf.export.tflm import tflm_available
from dkm_tf.export.verify import ExportVerificationError

__all__ = [
    "DECODE_MODES",
    "DEFAULT_TOLERANCE",
    "EXPORT_TARGETS",
    "FORMATS",
    "INT8_MIN_TOP1",
    "INT8_MODES",
    "ExportReport",
    "ExportReports",
    "ExportVerificationError",
    "TFLiteFormatError",
    "TFLiteInspection",
    "benchmark_latency",
    "check_palettes",
    "export_all",
    "inspect_tflite",
    "tflm_available",
    "to_tflite",
]
