"""The commands of ``dkm-tf``, the flags each takes, and the ``--help`` text (no Keras, no
TensorFlow; the flags themselves are defined in :mod:`dkm_tf.cli`).

:mod:`dkm_tf.cli_args` re-exports the names other modules import (``COMMANDS``,
``COMMAND_FLAGS``, ``EXTRA_FLAGS``, ``help_text``: ``from dkm_tf.cli_args import
help_text``); ``SUMMARY`` is read here only.
"""

from __future__ import annotations

COMMANDS = ("compress", "energy")

# one line per flag, grouped by subcommand (the flags themselves are defined in cli.py)
COMMAND_FLAGS = {
    "compress": ("model", "dataset", "method", "n_clusters", "unit", "granularity", "init",
                 "epochs", "finetune_epochs", "dkm_epochs", "lam", "seed", "output_dir",
                 "tflite", "plots", "plots_dir", "quiet", "codebook", "transforms",
                 "scale_bits", "weighting", "refine", "calibration_samples", "overrides",
                 "custom_objects"),
    "energy": ("model", "input_shape"),
}
EXTRA_FLAGS = {"energy": ("custom_objects",)}  # taken, not listed in "takes --model, ..."
SUMMARY = {
    "compress": "cluster (and fine-tune) a model; write .keras, .tflite files and report.json",
    "energy": "energy estimate (paper metric + memory hierarchy) of a .keras or .tflite file",
}


def help_text(command=None):
    """The ``--help`` text: the commands, then one line per flag of ``command`` (or all)."""
    from absl import flags  # noqa: PLC0415

    lines = ["dkm-tf: k-means weight sharing for Keras 3 models, shipped as TFLite.", "",
             "Usage:"]
    lines += [f"  dkm-tf {c:<9} [flags]   {SUMMARY[c]}" for c in COMMANDS]
    for cmd in ([command] if command else COMMANDS):
        lines += ["", f"Flags of `dkm-tf {cmd}`:"]
        for name in COMMAND_FLAGS[cmd] + EXTRA_FLAGS.get(cmd, ()):
            flag = flags.FLAGS[name]
            kind, enum = flag.flag_type(), getattr(flag.parser, "enum_values", None)
            value = ("" if kind == "bool" else " " + "|".join(enum) if enum
                     else " " + kind.upper())
            if cmd == "energy" and name == "model":
                help_line, default = "a .keras, .h5 or .tflite file (required)", None
            else:
                help_line, default = " ".join(flag.help.split()), flag.default
                if enum:  # absl puts "<a|b>: " in front of an enum's help
                    help_line = help_line.split(">: ", 1)[-1]
            if flag.flag_type() == "bool":  # the default, and the spelling that changes it
                help_line += (f" [on; --no{name} turns it off]" if flag.default
                              else f" [off; --{name} turns it on]")
            shown = "" if default is None or flag.flag_type() == "bool" else f" [{default}]"
            lines.append(f"  --{name}{value}: {help_line}{shown}")
    lines += ["", "Common flags:", "  --verbose: print the Python traceback of an error",
              "  -h, --help: this text (dkm-tf <command> --help, or dkm-tf help <command>: "
              "that command's flags)", "  --version: the version of dkm_tf", "",
              "Exit status: 0 done, 1 failed while running, 2 bad command line, 130 / 143 / 129 "
              "stopped by Ctrl-C / SIGTERM / SIGHUP, 141 output pipe closed."]
    return "\n".join(lines)
