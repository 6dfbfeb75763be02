"""dkm_tf.load_model says what is wrong with a file Keras would call "not found"."""

import zipfile

import pytest

import dkm_tf
from dkm_tf.training.serialization import check_model_file


def test_missing_folder_garbage_truncated_and_configless_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        dkm_tf.load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="not a folder"):
        dkm_tf.load_model(tmp_path)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"11 bytes, not a zip archive \(truncated"):
        dkm_tf.load_model(garbage)
    good = tmp_path / "good.keras"
    dkm_tf.models.digits_cnn().save(good)
    check_model_file(good)  # a real file passes
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated.keras.*not a zip archive"):
        dkm_tf.load_model(truncated)
    configless = tmp_path / "configless.keras"
    with zipfile.ZipFile(configless, "w") as z:
        z.writestr("metadata.json", "{}")
    with pytest.raises(ValueError, match="without config.json"):
        dkm_tf.load_model(configless)
    assert dkm_tf.load_model(good).name == "digits_cnn"
