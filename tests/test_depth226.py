"""Per-output tolerances in the order of the Keras reference and the file (session 26, review
F1): ``model.outputs`` keeps an ``OrderedDict``'s insertion order while the reference and the
file sort every mapping's keys, so each output's depth tolerance went to another output. Also
NaN outputs (F4) and the held-out warning's per-output tolerance (F3)."""

import collections
import warnings

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.export import convert as convert_lib  # noqa: E402
from dkm_tf.export import (  # noqa: E402
    depth,
    held_out,
    unit_check,
    verify,
)
from dkm_tf.export.refusal import over_tolerance  # noqa: E402
from dkm_tf.export.unit_errors import output_errors  # noqa: E402
from tests._depth26 import dense_chain  # noqa: E402

pytestmark = tf_backend_only()
L = keras.layers
OD = collections.OrderedDict
# output width -> layers with weights on its chain (a chain of d Dense(6), then Dense(width))
DEPTHS = {2: 1, 3: 11, 4: 16, 5: 21, 6: 6}


def _head(i, width):
    return L.Dense(width)(dense_chain(i, DEPTHS[width] - 1))


STRUCTURES = {
    "ordered_dict": lambda i: OD([("z", _head(i, 5)), ("a", _head(i, 2))]),
    "nested_ordered_dict": lambda i: {"o": OD([("z", _head(i, 2)), ("a", _head(i, 3))]),
                                      "b": [_head(i, 4), {"y": _head(i, 5), "c": _head(i, 6)}]},
    "dict_unsorted_keys": lambda i: {"z": _head(i, 5), "m": _head(i, 4), "a": _head(i, 2)},
    "list_of_dicts": lambda i: [OD([("z", _head(i, 5)), ("a", _head(i, 2))]),
                                {"y": _head(i, 3), "b": _head(i, 6)}],
}


def _expected(width, tolerance=1e-5, cap=1e-4):
    """The float tolerance of a chain of DEPTHS[width] layers: tolerance x n / 5 beyond 5."""
    return min(cap, tolerance * max(1.0, DEPTHS[width] / 5))


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_tolerances_follow_the_reference_order(name):
    keras.utils.set_random_seed(0)
    i = keras.Input((4,))
    model = keras.Model(i, STRUCTURES[name](i))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    reference = verify.keras_outputs(model, [x])
    widths = [r.shape[-1] for r in reference]
    assert len(set(widths)) == len(widths)
    got = depth.output_tolerances(model, 1e-5, 1e-4, [], len(reference))
    np.testing.assert_allclose(got, [_expected(w) for w in widths], rtol=1e-12)
    # the order maps model.outputs onto the reference
    order = depth.file_order(model, len(reference))
    assert [model.outputs[k].shape[-1] for k in order] == widths


def test_nested_ordered_dict_order():
    i = keras.Input((4,))
    inner = OD([("z", L.Dense(2)(i)), ("a", L.Dense(3)(i))])
    model = keras.Model(i, {"k": inner, "b": L.Dense(4)(i), "c": L.Dense(5)(i)})
    # model.outputs: b, c, k.z, k.a (keras.tree); reference: b, c, k.a, k.z (tf.nest)
    assert [t.shape[-1] for t in model.outputs] == [4, 5, 2, 3]
    assert depth.file_order(model, 4) == [0, 1, 3, 2]


def test_nested_model_with_ordered_dict_outputs():
    """An outer OrderedDict model reading a nested OrderedDict model's outputs: each output's
    depth is its own chain's (nested "a" 1 deep + 1; nested "z" 20 deep + 1)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    inner = keras.Model(i, OD([("z", L.Dense(5)(dense_chain(i, 19))), ("a", L.Dense(2)(i))]))
    j = keras.Input((6,))
    o = inner(j)
    outer = keras.Model(j, OD([("q", L.Dense(3)(o["a"])), ("b", L.Dense(4)(o["z"]))]))
    x = np.zeros((2, 6), "float32")
    assert [r.shape[-1] for r in verify.keras_outputs(outer, [x])] == [4, 3]  # b, q
    np.testing.assert_allclose(depth.output_tolerances(outer, 1e-5, 1e-4, [], 2),
                               (1e-5 * 21 / 5, 1e-5), rtol=1e-12)
    assert [r.shape[-1] for r in verify.keras_outputs(inner, [x])] == [2, 5]  # a, z
    np.testing.assert_allclose(depth.output_tolerances(inner, 1e-5, 1e-4, [], 2),
                               (1e-5, 1e-5 * 20 / 5), rtol=1e-12)


def test_depth_note_names_the_file_order():
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    model = keras.Model(i, OD([("z", dense_chain(i, 20)), ("a", L.Dense(3)(i))]))
    notes = []
    depth.output_tolerances(model, 1e-5, 1e-4, notes, 2)
    # reference: a (1 deep) is output 0, z (20 deep) output 1
    assert "1e-05 for output 0 (1 layers with weights)" in notes[0], notes
    assert "4e-05 for output 1 (20 layers with weights)" in notes[0], notes


def test_ordered_dict_head_off_is_refused(tmp_path):
    """Review F1: the 1-deep head 2.5e-5 off was verified at the 20-deep chain's 4e-5."""
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    model = keras.Model(i, OD([("z", dense_chain(i, 20)), ("a", L.Dense(3, name="head")(i))]))
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    reference = verify.keras_outputs(model, [x])
    assert [r.shape[-1] for r in reference] == [3, 6]
    wrong = keras.models.clone_model(model)
    wrong.set_weights(model.get_weights())
    bias = wrong.get_layer("head").bias
    bias.assign(bias.numpy() + 2.5e-5 * float(np.abs(reference[0]).max()))
    content = convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none")
    got = verify.run_tflite(content, [x], "litert")
    rel = float(np.abs(got[0] - reference[0]).max() / np.abs(reference[0]).max())
    assert 2e-5 < rel < 3e-5
    with pytest.raises(verify.ExportVerificationError, match=r"output 0: relative 2\.\d+e-05 "
                       r"\(its tolerance 1e-05"):
        dkm_tf.export.to_tflite(model, str(tmp_path / "od.tflite"), "float", sample_inputs=x,
                                float_content=content)
    assert not (tmp_path / "od.tflite").exists()


def test_unit_sensitivity_in_reference_order():
    """Regression guard (passes on 862cf41 too): the unit check's S_j are per reference
    output (stateless_call's outputs flattened with tf.nest, as the reference)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((4,))
    model = keras.Model(i, OD([("z", L.Dense(5)(i)), ("a", L.Dense(2)(i))]))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    reference = verify.keras_outputs(model, [x])
    sens = unit_check.unit_sensitivity(model, [x], reference)
    assert [s.shape for s in sens] == [(r.shape[-1],) for r in reference] == [(2,), (5,)]


class _C:
    """A comparison's fields over_tolerance reads."""

    def __init__(self, rels, tols):
        self.output_rel_errors, self.output_tolerances = rels, tols
        self.rel_error, self.tolerance = max(rels), max(tols)


def test_over_tolerance_propagates_nan():
    assert np.isnan(over_tolerance(_C((0.1, float("nan")), (0.5, 0.4))))
    assert np.isnan(over_tolerance(_C((float("nan"), 0.1), (0.5, 0.4))))
    assert over_tolerance(_C((0.1, 0.2), (0.5, 0.4))) == pytest.approx(0.5)


def test_output_errors_propagate_nan():
    ref = [np.ones((2, 3), "float32"), np.ones((2, 2), "float32")]
    got = [ref[0] + 0.1, np.array([[1.0, np.nan], [1.0, 1.0]], "float32")]
    err, rel = output_errors(got, ref, "test")
    assert np.isnan(err) and np.isnan(rel)


def _nan_model(bad):
    i = keras.Input((6,))
    a = L.Dense(3, name="a")(i)
    b = L.Dense(2, name="b")(i)
    if bad:  # NaN where b > 0
        b = keras.ops.where(b > 0, keras.ops.log(-keras.ops.abs(b) - 1.0), b)
    return keras.Model(i, [a, b])


def _nan_file():
    """``_nan_model(False)``, the file of ``_nan_model(True)`` with its weights, 5 samples."""
    keras.utils.set_random_seed(0)
    model, wrong = _nan_model(False), _nan_model(True)
    for n in "ab":
        wrong.get_layer(n).set_weights(model.get_layer(n).get_weights())
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    return model, convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none"), x


@pytest.mark.parametrize("tolerance", [None, 1e-5])
def test_nan_output_refused_saying_nan(tmp_path, tolerance):
    """Review F4: refused for "stale shapes after resize" (NaN != NaN), not for the NaN."""
    model, content, x = _nan_file()
    assert np.isnan(verify.run_tflite(content, [x], "litert")[1]).any()
    with pytest.raises(verify.ExportVerificationError) as e:
        dkm_tf.export.to_tflite(model, str(tmp_path / "n.tflite"), "float", sample_inputs=x,
                                float_content=content, tolerance=tolerance)
    assert "produced NaN" in str(e.value) and "stale shapes" not in str(e.value)
    assert "relative nan" in str(e.value)
    assert not (tmp_path / "n.tflite").exists()


def test_nan_output_not_verified_at_batch_1():
    """Without the batch run (TFLite Micro's path) a NaN in the second output was dropped."""
    model, content, x = _nan_file()
    c = verify.compare(verify.keras_outputs(model, [x]), content, [x], "litert", 1e-5)
    assert np.isnan(c.rel_error) and not c.ok


def test_held_out_warning_names_the_output(monkeypatch):
    """Review F3: the warning said the largest tolerance, not the failing output's own."""
    held = verify.Comparison("litert", 0.3, 0.45, 0.5, 4, measured_on=held_out.HELD_OUT,
                             output_tolerances=(0.5, 0.1), output_rel_errors=(0.45, 0.11))
    assert not held.ok and not held_out.clear_failure(held)
    monkeypatch.setattr(held_out, "held_out_check", lambda *a, **k: held)
    first = verify.Comparison("litert", 0.1, 0.2, 0.5, 4, output_tolerances=(0.5, 0.1),
                              output_rel_errors=(0.2, 0.05))
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held_out.judge("f.tflite", None, None, [np.zeros((8, 2), "float32")], [first], notes)
    text = str(caught[0].message)
    assert "tolerance 0.1 to 0.5 per output; output 1: relative 0.11 (its tolerance 0.1)" \
        in text, text
    assert notes[-1] == text
