"""Print how a .tflite stores its weights (dtypes, sizes, distinct values, palettes).

Usage:
  python export/inspect_tflite.py --tflite model.tflite

A missing, unreadable or corrupted file is one line on stderr, exit status 1
(DKM_TF_TRACEBACK=1 shows the traceback).
"""

import os
import sys

from absl import app, flags

from dkm_tf.export.cli import run_inspect, script_flags_parser

_TFLITE = flags.DEFINE_string("tflite", None, "Path to the .tflite file.")


def main(argv):
    del argv  # script_flags_parser refused positional arguments
    try:
        summary = run_inspect(_TFLITE.value)
    except (ValueError, TypeError, OSError) as e:  # bad input: one line
        if os.environ.get("DKM_TF_TRACEBACK"):
            raise
        print(f"inspect_tflite.py: error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(DKM_TF_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
    print(summary)


if __name__ == "__main__":
    flags.mark_flag_as_required("tflite")
    app.run(main, flags_parser=script_flags_parser("inspect_tflite.py"))
