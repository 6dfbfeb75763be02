"""Export a Keras model with clustered weights to a verified .tflite.

Usage:
  python export/to_tflite.py --model m.keras --palettes palettes.json [--format palettized]
      [--decode once|per_invoke] [--keep_float auto|none|0.1|conv1,conv2]
      [--kept_dtype float32|float16] [--index_packing dense|tuples]
      [--int8_mode dynamic|full] [--int8_scales per_channel|shared]
      [--samples x.npy|data.npz] [--representative_data calib.npy|data.npz]
      [--tolerance 2e-4] [--output m.tflite] [--overwrite]
      [--custom_objects my_layers.py,userpkg.losses]
  python export/to_tflite.py --model m.keras --n_clusters 16   # post-training k-means first
      [--unit scalar|row|kernel] [--granularity per_tensor|per_channel]

The output defaults to <model stem>.<format>.tflite (.palettized_per_invoke.tflite with
--decode=per_invoke). An existing output file is never
replaced unless --overwrite is given, and an input file (--model, --palettes, --samples,
--representative_data) never. A usage error (an unknown flag or value, a missing --model,
a positional argument, an output that exists or is an input, a flag the format does not
use set to a value other than its default: --decode with --format=int8, --int8_mode=full
with --format=palettized, --keep_float=none with --decode=per_invoke, --representative_data
without --int8_mode=full, --int8_mode=full without --samples or --representative_data (no
calibration data), an empty path (--samples=), one file for --samples and
--representative_data, a --tolerance not a positive number, ...) is refused before any work:
one line on stderr, exit status 2.
The written model is run in the LiteRT interpreters and compared with Keras before it is
written; the report is printed. A bad input is one line on stderr,
exit status 1, nothing written (DKM_TF_TRACEBACK=1 shows the traceback).
"""

import os
import sys

from absl import app, flags

from dkm_tf.cli_custom import HELP as CUSTOM_HELP
from dkm_tf.cli_custom import custom_code, load_error
from dkm_tf.core.files import is_home_tilde
from dkm_tf.export.cli import (
    default_output_path,
    inapplicable_flags,
    output_collision,
    path_flag_errors,
    run_to_tflite,
    script_error_text,
    script_flags_parser,
    tolerance_flag_error,
)

_MODEL = flags.DEFINE_string("model", None, "Path to the .keras model.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .tflite (default: beside the model, "
                               "<stem>.<format>.tflite; <stem>.palettized_per_invoke.tflite "
                               "with --decode=per_invoke).")
_FORMAT = flags.DEFINE_enum("format", "palettized", ["float", "fp16", "palettized", "int8",
                                                     "tflm"], "Storage format.")
_DECODE = flags.DEFINE_enum("decode", "once", ["once", "per_invoke"],
                            "Palettized decode mode.")
_KEEP = flags.DEFINE_string("keep_float", "auto",
                            "decode=once: 'auto' keeps as float32 the tensors whose "
                            "palettized form would not be smaller or would cost more than a "
                            "20% latency budget; a number sets that budget (0.1); 'none' "
                            "palettizes all; or comma-separated layer names.")
_KEPT = flags.DEFINE_enum("kept_dtype", "float32", ["float32", "float16"],
                          "decode=once: storage of the weights keep_float keeps (float16: "
                          "half their bytes, same speed, fp16 accuracy).")
_PACK = flags.DEFINE_enum("index_packing", "dense", ["dense", "tuples"],
                          "decode=once: 'dense' uses the spare int16 bits (smaller file), "
                          "'tuples' keeps less RAM after load.")
_INT8 = flags.DEFINE_enum("int8_mode", "dynamic", ["dynamic", "full"], "int8 flavour.")
_SCALES = flags.DEFINE_enum("int8_scales", "per_channel", ["per_channel", "shared"],
                            "--format=int8 with --palettes or --n_clusters: 'per_channel' "
                            "(the converter's scales: a clustered weight keeps <= K int8 "
                            "values per output channel) or 'shared' (one scale per "
                            "per-tensor palette's weight: <= K int8 values in the whole "
                            "tensor; costs accuracy where channel ranges differ).")
_PALETTES = flags.DEFINE_string("palettes", None, "JSON list of Palette.to_dict().")
_K = flags.DEFINE_integer("n_clusters", None, "Cluster every weight post-training to K.")
_UNIT = flags.DEFINE_enum("unit", "scalar", ["scalar", "row", "kernel"], "Clustering unit.")
_GRAN = flags.DEFINE_enum("granularity", "per_tensor", ["per_tensor", "per_channel"],
                          "Codebook granularity.")
_SAMPLES = flags.DEFINE_string("samples", None, "Sample inputs for verification (and the "
                                "calibration of --int8_mode=full, refused where they fit only "
                                "themselves: one value, or one sample widening the range 10x): a "
                                ".npy array, or a .npz (its x_test, else x_train, else its "
                                "only array).")
_REPR = flags.DEFINE_string("representative_data", None, "--int8_mode=full: calibration "
                             "inputs from the data the model will run on, read like "
                             "--samples (.npy, or .npz: x_test, else x_train, else its only "
                             "array); then --samples are verification samples only, held "
                             "out. Without it, full int8 is calibrated on --samples and "
                             "judged on a held-out half of them (from 8 samples refused "
                             "where that fails clearly, else a warning; under 4, no check). "
                             "--int8_mode=full needs it or --samples.")
_TOLERANCE = flags.DEFINE_float("tolerance", None, "Relative tolerance of the verification "
                                 "(max |tflite - keras| / max |keras| per output), a positive "
                                 "number; default: the format's (float 1e-5, up to 1e-4 for "
                                 "deep models; palettized / tflm 1e-4, fp16 2e-2, int8 0.5). "
                                 "Raise it only after checking the outputs yourself.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
_CUSTOM = flags.DEFINE_string("custom_objects", None, CUSTOM_HELP)


def main(argv):
    del argv  # script_flags_parser refused positional arguments
    bad = inapplicable_flags(_FORMAT.value, _DECODE.value, _INT8.value, _KEEP.value,
                             _KEPT.value, _PACK.value, _SCALES.value,
                             palettes=bool(_PALETTES.value) or _K.value is not None,
                             representative_data=_REPR.value)
    bad += path_flag_errors(model=_MODEL.value, output=_OUTPUT.value, palettes=_PALETTES.value,
                            samples=_SAMPLES.value, representative_data=_REPR.value)
    bad += [e for e in [tolerance_flag_error(_TOLERANCE.value)] if e]
    if _FORMAT.value == "int8" and _INT8.value == "full" and not (_SAMPLES.value or _REPR.value):
        bad.append("Invalid value for flag `--representative_data`. Expected a calibration "
                   "file of the data the model will run on (.npy / .npz, or --samples) with "
                   "--int8_mode=full: without either, full int8 would be calibrated on seeded "
                   "noise (use --int8_mode=dynamic to need none). Received: neither "
                   "--representative_data nor --samples")
    if bad:  # a usage error, before any work: the first such flag, one line
        print(f"to_tflite.py: error: {bad[0]}", file=sys.stderr)
        sys.exit(2)
    # "--output=~/m.tflite": the shell leaves a ~ after "=" alone; expanded as dkm-tf does
    model, output, palettes, samples, representative = (
        v and (os.path.expanduser(v) if is_home_tilde(v) else v)
        for v in (_MODEL.value, _OUTPUT.value, _PALETTES.value, _SAMPLES.value, _REPR.value))
    out = output or default_output_path(model, _FORMAT.value, _DECODE.value)
    inputs = {"model": model, "palettes": palettes, "samples": samples,
              "representative_data": representative}
    clash = output_collision(out, **inputs)
    if clash:  # never, even with --overwrite: the input would be lost
        print(f"to_tflite.py: error: Invalid value for flag `--output`. Expected a path other "
              f"than --{clash} (writing the .tflite there would destroy that input, with "
              f"--overwrite too). Received: --output={out}, --{clash}={inputs[clash]}",
              file=sys.stderr)
        sys.exit(2)
    if os.path.isdir(out):  # --overwrite would not help
        print(f"to_tflite.py: error: Invalid value for flag `--output`. Expected a file path. "
              f"Received: --output={out} (a folder)", file=sys.stderr)
        sys.exit(2)
    if os.path.exists(out) and not _OVERWRITE.value:
        print(f"to_tflite.py: error: Invalid value for flag `--output`. Expected a path that "
              f"does not exist yet (or pass --overwrite to replace it). Received: "
              f"--output={out} (exists)", file=sys.stderr)
        sys.exit(2)
    try:  # the user's code first (a usage error: exit 2), registered before the model loads
        scope = custom_code(_CUSTOM.value, usage_error=_usage_error, model_path=model)
    except ValueError as e:
        print(f"to_tflite.py: error: {e} (see to_tflite.py --help)", file=sys.stderr)
        sys.exit(2)
    with scope:  # load_error inside it: the user's classes are known there
        try:
            report = run_to_tflite(model, out, format=_FORMAT.value,
                                   decode=_DECODE.value, int8_mode=_INT8.value,
                                   keep_float=_KEEP.value, kept_dtype=_KEPT.value,
                                   index_packing=_PACK.value, int8_scales=_SCALES.value,
                                   palettes_path=palettes, n_clusters=_K.value,
                                   unit=_UNIT.value, granularity=_GRAN.value,
                                   samples_path=samples,
                                   representative_path=representative,
                                   tolerance=_TOLERANCE.value)
        except (ValueError, TypeError, OSError) as e:  # bad input: one line, nothing written
            if os.environ.get("DKM_TF_TRACEBACK"):
                raise
            e = load_error(e, model) or e  # a custom class or function not known: which ones
            print(f"to_tflite.py: error: {type(e).__name__}: {script_error_text(e)} "
                  "(DKM_TF_TRACEBACK=1 shows the traceback)", file=sys.stderr)
            sys.exit(1)
    print(report.summary())


def _usage_error(flag, expected, received):
    return ValueError(f"invalid --{flag}: expected {expected}; received {received!r}")


if __name__ == "__main__":
    flags.mark_flag_as_required("model")
    app.run(main, flags_parser=script_flags_parser("to_tflite.py"))
