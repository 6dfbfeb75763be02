"""dkm_tf.data.load_mnist: a local folder (gzip'd or not), a file:// mirror, checksums, errors.

Hermetic: the real files come from the repository's shared data folder (tests needing them
skip where it is absent); mirrors are file:// URLs to temp folders; no network.
"""

import gzip
import hashlib
import pathlib
import shutil

import numpy as np
import pytest

from dkm_tf import data

STEMS = list(data.MNIST_FILES)
REAL = data.mnist_dir()
needs_real = pytest.mark.skipif(
    not all((REAL / (s + ".gz")).is_file() for s in STEMS), reason="MNIST IDX files absent")


def _idx(magic, arr):
    """An IDX file's bytes (independent writer: big-endian header, then uint8 data)."""
    dims = b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def _synthetic(folder, gz=True):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 5),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3)}
    for stem, arr in arrays.items():
        raw = _idx(2051 if arr.ndim == 3 else 2049, arr)
        (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_path_synthetic_idx(tmp_path, gz):
    arrays = _synthetic(tmp_path, gz)
    (xtr, ytr), (xte, yte) = data.load_mnist(tmp_path, verify=False)
    np.testing.assert_array_equal(ytr, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(yte, arrays["t10k-labels-idx1-ubyte"])
    np.testing.assert_allclose(xtr[..., 0], arrays["train-images-idx3-ubyte"] / 255.0,
                               rtol=0, atol=1e-7)
    assert xtr.shape == (5, 28, 28, 1) and xte.dtype == np.float32 and ytr.dtype == np.int32
    with pytest.raises(ValueError, match="Checksum mismatch"):  # not the real MNIST
        data.load_mnist(tmp_path)


@needs_real
def test_path_real_gz_and_raw_mixed(tmp_path):
    """Two files gzip'd, two uncompressed (one with the dotted name): same arrays."""
    for s in STEMS[:2]:
        shutil.copy(REAL / (s + ".gz"), tmp_path)
    for s, name in ((STEMS[2], STEMS[2]), (STEMS[3], STEMS[3].replace("-idx", ".idx"))):
        (tmp_path / name).write_bytes(gzip.decompress((REAL / (s + ".gz")).read_bytes()))
    (xtr, ytr), (xte, yte) = data.load_mnist(str(tmp_path))
    assert xtr.shape == (60000, 28, 28, 1) and xte.shape == (10000, 28, 28, 1)
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]   # the known first labels
    assert yte[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(ytr).tolist()[:2] == [5923, 6742]
    raw = gzip.decompress((REAL / (STEMS[0] + ".gz")).read_bytes())
    ref = np.frombuffer(raw, np.uint8, offset=16)[:784].reshape(28, 28) / 255.0
    np.testing.assert_allclose(xtr[0, ..., 0], ref, rtol=0, atol=1e-7)
    assert 0.0 <= xtr.min() and xtr.max() == 1.0


@needs_real
def test_checksums_in_code_match_files():
    for stem, (gz_sha, raw_sha, size) in data.MNIST_FILES.items():
        blob = (REAL / (stem + ".gz")).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == gz_sha
        raw = gzip.decompress(blob)
        assert hashlib.sha256(raw).hexdigest() == raw_sha and len(raw) == size


def test_missing_files_error_says_where_to_get_them(tmp_path):
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as e:
        data.load_mnist(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "missing: train-images-idx3-ubyte.gz" in msg
    assert "t10k-labels-idx1-ubyte.gz," not in msg.split("missing:")[1].split(")")[0]
    for stem, (gz_sha, raw_sha, _) in data.MNIST_FILES.items():
        assert f"{stem}.gz" in msg and gz_sha in msg and raw_sha in msg
    assert data.MNIST_MIRRORS[0] in msg and "DKM_TF_MNIST_DIR" in msg and "url=" in msg


@needs_real
def test_checksum_mismatch_corrupt_copy(tmp_path):
    for s in STEMS:
        shutil.copy(REAL / (s + ".gz"), tmp_path)
    raw = bytearray(gzip.decompress((REAL / (STEMS[1] + ".gz")).read_bytes()))
    raw[8] = (raw[8] + 1) % 10                       # first training label 5 -> 6
    bad = tmp_path / (STEMS[1] + ".gz")
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match="Checksum mismatch") as e:
        data.load_mnist(tmp_path)
    assert str(bad) in str(e.value) and data.MNIST_FILES[STEMS[1]][1] in str(e.value)
    assert "verify=False" in str(e.value)
    (_, ytr), _ = data.load_mnist(tmp_path, verify=False)
    assert ytr[0] == 6


def _mirror(tmp_path):
    """A file:// mirror holding the four real IDX files, and an empty cache folder."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    for s in STEMS:
        shutil.copy(REAL / (s + ".gz"), mirror)
    return mirror, cache


@needs_real
def test_file_url_mirror_download_and_cache(tmp_path):
    mirror, cache = _mirror(tmp_path)
    (xtr, ytr), (xte, yte) = data.load_mnist(url=mirror.as_uri() + "/", cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(s + ".gz" for s in STEMS)
    assert ytr[:3].tolist() == [5, 0, 4] and xte.shape == (10000, 28, 28, 1)
    shutil.rmtree(mirror)                       # cached: no second download
    (_, ytr2), _ = data.load_mnist(mirror.as_uri(), cache_dir=cache)   # a URL as `path`
    np.testing.assert_array_equal(ytr, ytr2)


@needs_real
def test_file_url_corrupt_mirror_writes_nothing(tmp_path):
    mirror, cache = _mirror(tmp_path)
    blob = bytearray((mirror / (STEMS[3] + ".gz")).read_bytes())
    blob[-5] ^= 0xFF
    (mirror / (STEMS[3] + ".gz")).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="Checksum mismatch for file://") as e:
        data.load_mnist(url=mirror.as_uri(), cache_dir=cache)
    assert data.MNIST_FILES[STEMS[3]][0] in str(e.value)
    assert not (cache / (STEMS[3] + ".gz")).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_file_url_missing_and_bad_arguments(tmp_path):
    with pytest.raises(OSError, match="Could not download file://.*train-images") as e:
        data.load_mnist(url=(tmp_path / "nothing").as_uri(), cache_dir=tmp_path / "c")
    assert data.MNIST_FILES[STEMS[0]][0] in str(e.value)
    with pytest.raises(ValueError, match=r"argument `url`.*Received: url='ftp://x'"):
        data.load_mnist(url="ftp://x", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="argument `path`.*not both"):
        data.load_mnist(tmp_path, url="file:///x")
    with pytest.raises(TypeError, match="argument `path`.*Received: path=3"):
        data.load_mnist(3)
    f = tmp_path / "f.gz"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"argument `path`.*\(a file\)"):
        data.load_mnist(f)


def test_env_dir_and_default_cache(tmp_path, monkeypatch):
    arrays = _synthetic(tmp_path)
    monkeypatch.setenv("DKM_TF_MNIST_DIR", str(tmp_path))
    assert data.mnist_dir() == pathlib.Path(tmp_path)
    (_, ytr), _ = data.load_mnist(verify=False)
    np.testing.assert_array_equal(ytr, arrays["train-labels-idx1-ubyte"])
    monkeypatch.setenv("DKM_TF_CACHE_DIR", str(tmp_path / "cc"))
    assert data.mnist_cache_dir() == tmp_path / "cc" / "mnist"
