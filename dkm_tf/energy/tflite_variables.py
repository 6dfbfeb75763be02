"""A `.tflite` whose weights are resource variables no op of it assigns: refused by the reader.

``tf.saved_model.save`` of a Keras 3 model converted by ``TFLiteConverter.from_saved_model``
(TensorFlow 2.21) keeps the weights as resource variables: ``VAR_HANDLE`` + ``READ_VARIABLE``
and no ``ASSIGN_VARIABLE`` in any subgraph, so the file stores no weight values, and LiteRT
and ``tf.lite`` both run it to all-NaN outputs without an error. ``dkm_tf.export
.inspect_tflite`` notes such a file (both read ``core.interpreters.unassigned_variable_reads``).
Energy refuses it: the file does not compute the model, and its numbers would be wrong too
(a bias read from a variable is not a constant, so each bias addition was charged as an
element-wise ADD: +24 % hierarchy energy on a small CNN), and the palettes of its weights
cannot be read.
"""

from collections import Counter

from dkm_tf.core.interpreters import unassigned_variable_reads
from dkm_tf.energy.tflite_control import _op_name


def check_assigned(model, op_names, where):
    """Raise `ValueError` if the model (all subgraphs) reads resource variables
    (``READ_VARIABLE``) and assigns none (``ASSIGN_VARIABLE``); ``where`` names the file."""
    ops = Counter(_op_name(model, op_names, g.Operators(k))
                  for g in (model.Subgraphs(s) for s in range(model.SubgraphsLength()))
                  for k in range(g.OperatorsLength()))
    reads = unassigned_variable_reads(ops)
    if reads:
        raise ValueError(
            "Invalid value for argument `model_or_path`. Expected a .tflite that stores its "
            "weights (convert with dkm_tf.export.to_tflite, or model.export(path) then "
            f"from_saved_model(path)). Received: {where!r}, which reads {reads} resource "
            "variable(s) no op of it assigns (READ_VARIABLE, no ASSIGN_VARIABLE): the weights "
            "are not in the file, interpreters run it on uninitialized memory (all-NaN "
            "outputs measured) and its bias additions would be charged as element-wise ops. "
            "tf.saved_model.save of a Keras 3 model then from_saved_model gives such a file; "
            "dkm_tf.energy.estimate(model) of the Keras model gives its numbers.")
