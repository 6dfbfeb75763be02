"""dkm_tf.data: the user's own data as a .npz file (check_npz / load_npz / load_dataset)."""

import io
import zipfile

import numpy as np
import pytest

from dkm_tf import data


def _arrays(n_train=12, n_test=5, shape=(6, 6, 1), seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.random((n_train, *shape)), "y_train": rng.integers(0, 3, n_train),
            "x_test": rng.random((n_test, *shape)), "y_test": rng.integers(0, 3, n_test)}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_round_trip_casts_and_keeps_every_value(tmp_path, save):
    arrays = _arrays()
    arrays["x_test"] = arrays["x_test"].astype(np.float16)
    arrays["y_test"] = arrays["y_test"].astype(np.uint8).reshape(-1, 1)  # (n, 1) labels
    path = tmp_path / "mine.npz"
    save(path, **arrays)
    info = data.check_npz(path)
    assert info == {k: (v.shape, v.dtype) for k, v in arrays.items()}
    (x_tr, y_tr), (x_te, y_te) = data.load_dataset(str(path))
    assert x_tr.dtype == x_te.dtype == np.float32 and y_tr.dtype == y_te.dtype == np.int32
    np.testing.assert_array_equal(x_tr, arrays["x_train"].astype(np.float32))
    np.testing.assert_array_equal(x_te, arrays["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y_tr, arrays["y_train"])
    np.testing.assert_array_equal(y_te, arrays["y_test"].reshape(-1))
    (again, _), _ = data.load_dataset(path)  # a pathlib.Path works too
    np.testing.assert_array_equal(again, x_tr)


def test_check_reads_headers_only(tmp_path):
    """A header that claims 10^12 floats (8 TB) is described, not loaded."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key, shape, dtype in (("x_train", (10**6, 10**6), "<f8"), ("y_train", (10**6,), "<i8"),
                                  ("x_test", (3, 10**6), "<f8"), ("y_test", (3,), "<i8")):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                buf, {"descr": dtype, "fortran_order": False, "shape": shape})
            z.writestr(f"{key}.npy", buf.getvalue())  # no data after the header
    info = data.check_npz(path)
    assert info["x_train"] == ((10**6, 10**6), np.dtype("<f8"))


def _bad(tmp_path, **changes):
    arrays = _arrays()
    arrays.update(changes)
    for k in [k for k, v in arrays.items() if v is None]:
        del arrays[k]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("changes, match", [
    ({"x_test": None, "y_test": None}, r"the arrays \['x_train', 'y_train', 'x_test', "
     r"'y_test'\] \(or, without labels, x_train and optionally x_test\).*it lacks "
     r"\['x_test', 'y_test'\]; it has \['x_train', 'y_train'\]"),
    ({"x_train": None, "y_train": None, "y_test": None}, r"it lacks \['x_train', 'y_train', "
     r"'y_test'\]; it has \['x_test'\]"),
    ({"y_train": np.zeros(11, int)}, r"y_train of shape \(12,\): one label per sample.*"
     r"shape \(11,\)"),
    ({"y_test": np.zeros((5, 2), int)}, r"y_test of shape \(5,\).*shape \(5, 2\)"),
    ({"y_train": np.zeros(12)}, "integer class labels in y_train.*dtype float64"),
    ({"x_test": np.zeros((5, 6, 7, 1))}, r"the same shape per sample.*\(6, 6, 1\) and "
     r"\(6, 7, 1\)"),
    ({"x_train": np.zeros(12), "y_train": np.zeros(12, int)},
     r"x_train with samples along its first axis.*shape \(12,\)"),
    ({"y_test": -np.ones(5, int)}, r"class labels in \[0, 2\*\*31 - 1\] in y_test.*labels "
     "from -1 to -1"),
    ({"y_train": np.full(12, 2**32 + 3)}, r"in y_train.*labels from 4294967299 to"),  # not 3
    ({"x_test": np.full((5, 6, 6, 1), np.inf)}, r"finite inputs in x_test.*180 of 180 values "
     "are NaN or infinite"),
    ({"x_train": np.full((12, 6, 6, 1), 1e39)}, r"finite inputs in x_train.*432 of 432"),
])
def test_bad_files_name_what_is_wrong(tmp_path, changes, match):
    path = _bad(tmp_path, **changes)
    with pytest.raises(data.DatasetFileError, match=match) as e:
        data.load_dataset(str(path))
    assert isinstance(e.value, ValueError) and str(path) in str(e.value)


def test_x_train_alone_is_unlabelled_calibration_data(tmp_path):
    x = _arrays()["x_train"]
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x_train=x)
    assert data.check_npz(path) == {"x_train": (x.shape, x.dtype)}
    (x_tr, y_tr), test = data.load_dataset(str(path))
    np.testing.assert_array_equal(x_tr, x.astype(np.float32))
    assert y_tr is None and test is None
    np.savez(path, x_train=x[:, 0, 0])  # (12, 1): samples of one value each: fine
    assert data.load_npz(path)[0][0].shape == (12, 1)
    np.savez(path, x_train=x[:, 0, 0, 0])
    with pytest.raises(data.DatasetFileError, match="x_train with samples along its first"):
        data.load_npz(path)


def test_unlabelled_held_out_inputs(tmp_path):
    arrays = {k: v * 2 - 1 for k, v in _arrays().items()}  # inputs in [-1, 1] (as fer's)
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x_train=arrays["x_train"], x_test=arrays["x_test"])
    (x_tr, y_tr), (x_te, y_te) = data.load_npz(path)
    np.testing.assert_array_equal(x_te, arrays["x_test"].astype(np.float32))
    assert y_tr is None and y_te is None and len(x_tr) == 12
    np.savez(path, x_train=arrays["x_train"], x_test=arrays["x_test"][:, :5])
    with pytest.raises(data.DatasetFileError, match=r"the same shape per sample.*\(6, 6, 1\) "
                       r"and \(5, 6, 1\)"):
        data.check_npz(path)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, **{**_arrays(), "x_train": np.array([{"a": 1}] * 12, dtype=object)})
    with pytest.raises(data.DatasetFileError, match="numeric arrays"):
        data.check_npz(path)


def test_a_folder_named_like_a_file_is_called_a_folder(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(data.DatasetFileError, match=r"d.npz' \(a folder\)"):
        data.load_dataset(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("content, match", [(None, "no such file"),
                                             (b"not a zip", "File is not a zip file")])
def test_missing_or_broken_file(tmp_path, content, match):
    path = tmp_path / "x.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(data.DatasetFileError, match=match):
        data.load_dataset(str(path))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"one of \['digits'.*or a .npz file path.*'imagenet'"):
        data.load_dataset("imagenet")
