"""Print how a .tflite stores its weights (dtypes, sizes, distinct values, palettes).

Usage:
  python export/inspect_tflite.py --tflite model.tflite
"""

from absl import app, flags

from dkm_tf.export.cli import run_inspect

_TFLITE = flags.DEFINE_string("tflite", None, "Path to the .tflite file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    print(run_inspect(_TFLITE.value))


if __name__ == "__main__":
    flags.mark_flag_as_required("tflite")
    app.run(main)
