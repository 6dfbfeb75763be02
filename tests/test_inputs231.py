"""Session 31, review of the inputs of several arrays (``x_train.<input name>``).

1. A model built on a dict inside a list whose keys cross its inputs' names
   (``[a, {"p": Input(name="q"), "q": Input(name="p")}]``): a ``.npz`` keyed by the dict keys
   fed each array to the other input (accuracy_before 0.479, numpy 0.729); now exit 2.
2. An optional input given None: ``compress(weighting="fisher")`` raised IndexError
   (``calibration_set``), ``sample_count`` TypeError when the None came first.
3. Integer ids above 2**24 in a ``.npz`` became other ids in the float32 cast (0.917 for
   1.0); now refused naming the key and the largest value.
4. ``keyed_inputs`` / ``first_samples`` of a dict for a model built on a list sorted the
   dict's keys: ``{"zeta": A, "alpha": B}`` fed A to alpha.
5. The ``[data]`` line names each input; ``tflite_accuracy``'s docstring says a list gives
   None.
"""

import io
import json

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import cli, cli_tables, data
from dkm_tf.data_files import DatasetFileError
from dkm_tf.data_inputs import calibration_set, sample_count
from dkm_tf.tflite_feed import keyed_inputs

L = keras.layers


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--noplots", "--quiet", "--notflite", *args],
                 stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def _dense(inputs, struct, seed):
    keras.utils.set_random_seed(seed)
    h = L.Concatenate()([L.Dense(6, name=f"d{i}")(t) for i, t in enumerate(inputs)])
    return keras.Model(struct, L.Dense(4, name="o")(L.Activation("relu")(h)))


def _save(tmp_path, model, x, feed, n_train=48):
    model.save(tmp_path / "m.keras")
    y = np.argmax(model.predict(feed(x), verbose=0), 1)
    arrays = {f"x_{s}.{k}": (v[:n_train] if s == "train" else v[n_train:])
              for k, v in x.items() for s in ("train", "test")}
    np.savez(tmp_path / "d.npz", y_train=y[:n_train], y_test=y[n_train:], **arrays)
    return str(tmp_path / "m.keras"), str(tmp_path / "d.npz")


@pytest.mark.parametrize("keys", ["crossed", "names", "others"])
def test_nested_dict_keys_crossing_input_names_are_refused(tmp_path, keys):
    """Keys naming another input are refused; keys equal to the names, or naming no input
    (``{"k1": Input(name="q"), ...}``: unambiguous, ``x_train.q`` feeds q), are read
    (review R9: the first version refused the latter too, read right before)."""
    a, q, p = (keras.Input((4,), name=n) for n in "aqp")
    inner = {"crossed": {"p": q, "q": p}, "names": {"q": q, "p": p},
             "others": {"k1": q, "k2": p}}[keys]
    model = _dense([a, q, p], [a, inner], seed=6)
    rng = np.random.default_rng(6)
    x = {k: rng.normal(size=(96, 4)).astype(np.float32) for k in "apq"}
    feed = {"crossed": lambda x: [x["a"], {"p": x["q"], "q": x["p"]}],
            "names": lambda x: [x["a"], {k: x[k] for k in "pq"}],
            "others": lambda x: [x["a"], {"k1": x["q"], "k2": x["p"]}]}[keys]
    m, d = _save(tmp_path, model, x, feed)
    rc, _, err = _run("--model", m, "--dataset", d, "--method", "wr", "--n_clusters", "4",
                      "--output_dir", str(tmp_path / "out"))
    if keys == "crossed":  # before: rc 0, accuracy_before 0.479 (the arrays of p and q swapped)
        assert rc == 2, err
        assert "the key 'p' holds the input 'q'" in " ".join(err.split())
    else:
        assert rc == 0, err
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["accuracy_before"] == pytest.approx(1.0, abs=1e-12)


def _optional_model():
    @keras.saving.register_keras_serializable(package="inputs231")
    class AddIfGiven(L.Layer):
        def call(self, x, m=None):
            return x if m is None else x + m

    keras.utils.set_random_seed(0)
    x_, m_ = keras.Input((4,), name="x"), keras.Input((4,), name="m", optional=True)
    h = L.Dense(8, activation="relu", name="d")(AddIfGiven()(x_, m_))
    return keras.Model([x_, m_], L.Dense(3, name="o")(h))


def test_optional_input_given_none_passes_through_calibration():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.arange(10)
    assert sample_count([None, x]) == 10  # before: TypeError len(None)
    xs, ys = calibration_set(([x, None], y), 4, seed=3)  # before: IndexError
    pick = np.sort(np.random.default_rng(3).permutation(10)[:4])
    assert xs[1] is None and np.array_equal(xs[0], x[pick]) and np.array_equal(ys, y[pick])
    model = _optional_model()
    x = np.random.default_rng(0).normal(size=(48, 4)).astype(np.float32)
    y = np.argmax(model.predict([x, None], verbose=0), 1)
    r = dkm_tf.compress(model, ([x, None], y), ([x, None], y), method="wr",
                        weighting="fisher", n_clusters=4, verbose=0)
    assert r.calibration["samples"] == 48
    from dkm_tf.graph.sensitivity import fisher_importance  # None == zeros for x + m

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    got = fisher_importance(model, ([x[:8], None], y[:8]), loss)
    ref = fisher_importance(model, ([x[:8], np.zeros_like(x[:8])], y[:8]), loss)
    assert len(got) == 2 and got.keys() == ref.keys()  # the two kernels
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-12)
    assert r.accuracy_before == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("named", [True, False])
def test_integer_ids_float32_cannot_hold_are_refused(tmp_path, named):
    rng = np.random.default_rng(5)
    ids = (2**24 + 1 + 2 * rng.integers(0, 1000, (20, 1))).astype(np.int64)
    key = "x_train.ids" if named else "x_train"
    extra = {"x_train.feat": rng.normal(size=(20, 4))} if named else {}
    np.savez(tmp_path / "big.npz", **{key: ids}, **extra)
    with pytest.raises(DatasetFileError) as e:  # before: loaded, ids rounded to even ones
        data.load_dataset(str(tmp_path / "big.npz"))
    msg = str(e.value)
    assert key in msg and f"the largest {int(ids.max())}" in msg
    assert f"read as {int(np.float32(ids.max()))}" in msg
    exact = np.array([[2**25], [-(2**24) - 2], [7]], np.int64)  # held exactly: loaded
    np.savez(tmp_path / "ok.npz", **{key: exact}, **{k: v[:3] for k, v in extra.items()})
    got = data.load_dataset(str(tmp_path / "ok.npz"))[0][0]
    got = got["ids"] if named else got
    assert np.array_equal(got.astype(np.int64), exact)
    ins = [keras.Input((1,), dtype="int64", name="ids")] + (
        [keras.Input((4,), name="feat")] if named else [])
    h = L.Flatten()(L.Embedding(64, 4)(L.Hashing(64)(ins[0])))
    keras.Model(ins if named else ins[0], L.Dense(3)(h)).save(tmp_path / "m.keras")
    rc, _, err = _run("--model", str(tmp_path / "m.keras"), "--dataset",
                      str(tmp_path / "big.npz"))
    assert rc == 2 and key in err


def _zeta_alpha():
    keras.utils.set_random_seed(0)
    zeta, alpha = keras.Input((4,), name="zeta"), keras.Input((4,), name="alpha")
    h = L.Concatenate()([L.Dense(6, name="da")(zeta), L.Dense(6, name="db")(alpha)])
    return keras.Model([zeta, alpha], L.Dense(4, name="o")(h))


def test_a_dict_for_a_list_model_is_matched_by_name():
    model = _zeta_alpha()
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(40, 4)).astype(np.float32) for _ in range(2))
    keyed = keyed_inputs(model, {"zeta": a, "alpha": b})
    assert keyed["zeta"] is a and keyed["alpha"] is b  # before: zeta got b
    first = cli_tables.first_samples({"zeta": a, "alpha": b}, 5, model)
    assert np.array_equal(first[0], a[:5]) and np.array_equal(first[1], b[:5])
    assert [x is a for x in keyed_inputs(model, [a, b]).values()] == [True, False]


def test_data_line_names_each_input_and_docstring_says_a_list_gives_none():
    keras.utils.set_random_seed(0)
    tok, feat = keras.Input((6,), dtype="int32", name="tok"), keras.Input((5,), name="feat")
    e = L.GlobalAveragePooling1D()(L.Embedding(20, 8)(tok))
    model = keras.Model([tok, feat], L.Dense(3)(L.Concatenate()([e, feat])))
    x = [np.arange(60).reshape(10, 6) % 20, np.zeros((10, 5), np.float32)]
    line = cli_tables.data_line("d.npz", (x, np.zeros(10, int)), (x, np.zeros(10, int)),
                                model=model)
    assert "[tok (6,) in [0, 19]; feat (5,) in [0, 0]] (one per input)" in line
    doc = " ".join(dkm_tf.pipeline.tflite_accuracy.__doc__.split())
    assert "a list gives None" in doc and "a list of arrays in the Keras model's" not in doc
