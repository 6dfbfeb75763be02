"""``dkm-tf energy``'s run (moved out of :mod:`dkm_tf.cli`, which re-exports it)."""

from __future__ import annotations

from dkm_tf.cli_args import input_shape_error
from dkm_tf.cli_custom import custom_code, load_error
from dkm_tf.cli_help import model_flag_error


def run_energy(model_path, custom_objects=None, **kwargs):
    """Run ``dkm-tf energy``; returns the printed text (``kwargs``: those of
    :func:`dkm_tf.energy.estimate`, ``index_cost="auto"`` unless given: the index entropy as in
    ``dkm-tf compress`` where the file gives it; a bad ``input_shape`` names --input_shape).
    ``custom_objects``: ``--custom_objects``' ``.py`` files or module names, imported before
    the model loads (:func:`dkm_tf.cli_custom.custom_code`)."""
    from dkm_tf import energy  # noqa: PLC0415
    from dkm_tf.energy.keras_reader import InputShapeError  # noqa: PLC0415

    with custom_code(custom_objects, model_path=model_path):
        try:
            text = energy.energy_cli_text(model_path, **kwargs)
        except InputShapeError as e:
            raise input_shape_error(e, kwargs.get("input_shape")) from None
        except ValueError as e:  # a damaged or renamed file: named with its flag
            clear = model_flag_error(e, model_path) or load_error(e, model_path)
            if clear is None:
                raise
            raise clear from e
    print(text, flush=True)
    return text
