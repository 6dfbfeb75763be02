"""Seeded verification samples of a model with a masking Embedding (``mask_zero=True``)
hold padded rows (a trailing run of 0s), so an export without ``sample_inputs`` is checked on
the padded sequences its users feed it; before, token ids were uniform (a padded tail in none
of the rows; KNOWN_LIMITATIONS: "pass padded sample_inputs")."""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.export import convert
from tests.testing import run_tflite_per_sample

L = keras.layers


def _tagger(mask_zero=True):
    keras.utils.set_random_seed(0)
    ids = keras.Input((9,), dtype="int32")
    h = L.Embedding(20, 6, mask_zero=mask_zero, name="emb")(ids)
    h = L.LSTM(5, name="rnn")(h)
    return keras.Model(ids, L.Dense(3, name="out")(h))


def test_odd_rows_padded_with_trailing_zeros_and_noted():
    model = _tagger()
    (ids,), note = convert.synthetic_samples(model, convert.input_specs(model))
    assert "every other row of input(s) [0] padded with trailing 0s" in note, note
    for row in range(1, len(ids), 2):
        nonzero = np.flatnonzero(ids[row])
        tail = ids[row, (nonzero.max() + 1 if nonzero.size else 0):]
        assert ids[row, -1] == 0 and np.all(tail == 0)
    lengths = {int(np.flatnonzero(np.r_[ids[r], 1] == 0)[0]) for r in range(1, len(ids), 2)}
    assert len(lengths) > 1  # padded to several lengths
    # the padding changes the outputs (the mask is exercised), not only the ids
    full = ids.copy()
    full[full == 0] = 7
    assert np.max(np.abs(np.asarray(model(ids)) - np.asarray(model(full)))) > 1e-4


def test_no_padding_without_a_masking_embedding():
    model = _tagger(mask_zero=False)
    (ids,), note = convert.synthetic_samples(model, convert.input_specs(model))
    assert "padded" not in note
    assert np.count_nonzero(ids == 0) < ids.size // 4  # uniform over 20 ids


@pytest.mark.parametrize("fmt", ["palettized"])
def test_export_without_samples_verifies_padded_rows(tmp_path, fmt):
    model = _tagger()
    palettes = None
    if fmt == "palettized":
        shared = dkm_tf.share_weights(model, 4)
        model, palettes = shared.model, shared.palettes
    report = dkm_tf.export.to_tflite(model, tmp_path / "t.tflite", fmt, palettes)
    assert any("padded with trailing 0s" in n for n in report.notes), report.notes
    assert report.comparisons and all(c.ok for c in report.comparisons)
    (ids,), _ = convert.synthetic_samples(model, convert.input_specs(model))
    got = run_tflite_per_sample(str(tmp_path / "t.tflite"), ids)
    want = np.asarray(model(ids))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.max(np.abs(want)))


def test_only_inputs_read_by_a_masking_embedding_are_padded():
    # review: a categorical (n, 4) input read by a non-masking Embedding was padded too
    keras.utils.set_random_seed(0)
    cats = keras.Input((4,), dtype="int32", name="cats")
    ids = keras.Input((9,), dtype="int32", name="ids")
    inner = keras.Sequential([keras.Input((9,), dtype="int32"),
                              L.Embedding(20, 4, mask_zero=True), L.GlobalAveragePooling1D()])
    g = L.Flatten()(L.Embedding(30, 3, name="cat_emb")(cats))
    model = keras.Model([cats, ids], L.Dense(2)(L.Concatenate()([g, inner(ids)])))
    (c, i), note = convert.synthetic_samples(model, convert.input_specs(model))
    assert "input(s) [1] padded" in note, note
    assert np.count_nonzero(c == 0) < c.size // 4  # uniform over 20 ids, not padded
    assert all(i[r, -1] == 0 for r in range(1, len(i), 2))


def test_an_input_reaching_the_masking_embedding_through_other_layers_is_padded():
    # second review: an Embedding(mask_zero=True) reading its ids through an Identity / a cast
    # Lambda was no longer padded (8 of 72 ids zero, chance level)
    keras.utils.set_random_seed(0)
    ids = keras.Input((9,), dtype="int32")
    cats = keras.Input((4,), dtype="int32")
    h = L.Embedding(20, 4, mask_zero=True)(L.Lambda(lambda z: keras.ops.cast(z, "int32"))(
        L.Identity()(ids)))
    g = L.Flatten()(L.Embedding(30, 3)(L.Identity()(cats)))
    model = keras.Model([ids, cats], L.Dense(2)(L.Concatenate()([L.LSTM(3)(h), g])))
    (i, c), note = convert.synthetic_samples(model, convert.input_specs(model))
    assert "input(s) [0] padded" in note, note
    assert all(i[r, -1] == 0 for r in range(1, len(i), 2))
    assert np.count_nonzero(c == 0) < c.size // 4
