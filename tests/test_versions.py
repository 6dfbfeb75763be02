"""TensorFlow / Keras versions: what dkm_tf does on versions older than the ones it is built on.

Measured (KNOWN_LIMITATIONS.md "Versions"): TensorFlow 2.19 and 2.20's ``tf.lite.Interpreter``
cannot load INT2 tensors, and 2.19's crashes the process on a dynamic-range int8 file at
batch > 1; so under TensorFlow < 2.21 an export is verified in LiteRT only (noted), and
without LiteRT in ``tf.lite``, which refuses those files (test_versions_policy.py). Before
2.19 nothing was measured: ``interpreters=["tflite"]`` is refused, and without LiteRT the
export says what to install. These tests fake the TensorFlow version; nothing is installed.
"""

import numpy as np
import pytest
import tensorflow as tf
from test_export_tflite import clustered_copy

import dkm_tf.export as ex
from dkm_tf.export import interpreters, verify
from dkm_tf.models import digits_cnn


@pytest.mark.parametrize("version", ["2.19.1", "2.20.0", "2.20.0rc1", "2.16.2", "1.15.5"])
def test_old_tensorflow_tf_lite_is_named_unsupported(version):
    why = interpreters.tflite_unsupported(version)
    assert f"TensorFlow {version}" in why and "TensorFlow >= 2.21 required" in why
    assert "INT2" in why


@pytest.mark.parametrize("version", ["2.21.0", "2.21.0rc0", "2.22.0.dev20261201", "3.0.0",
                                     "unknown"])
def test_tensorflow_2_21_and_later_tf_lite_is_supported(version):
    assert interpreters.tflite_unsupported(version) is None


def test_installed_tensorflow_is_read_when_no_version_is_given(monkeypatch):
    monkeypatch.setattr(tf, "__version__", "2.21.0")
    assert interpreters.tflite_unsupported() is None
    monkeypatch.setattr(tf, "__version__", "2.20.0")
    assert "TensorFlow 2.20.0" in interpreters.tflite_unsupported()


@pytest.mark.parametrize("version,litert,expected", [
    ("2.21.0", True, ("litert", "tflite")),
    ("2.21.0", False, ("tflite",)),
    ("2.20.0", True, ("litert",)),
    ("2.19.1", True, ("litert",)),
    ("2.20.0", False, ("tflite",)),  # old code: RuntimeError; tf.lite verifies what it runs
    ("2.19.1", False, ("tflite",)),
    ("2.18.0", True, ("litert",)),
])
def test_default_interpreters_per_version(monkeypatch, version, litert, expected):
    monkeypatch.setattr(tf, "__version__", version)
    assert interpreters.default_interpreters(litert) == expected
    monkeypatch.setattr(verify, "litert_available", lambda: litert)
    assert verify.default_interpreters() == expected


@pytest.mark.parametrize("version", ["2.18.0", "2.16.2"])
def test_untested_tensorflow_without_litert_says_what_to_install(monkeypatch, version):
    monkeypatch.setattr(tf, "__version__", version)
    with pytest.raises(RuntimeError, match=rf"TensorFlow {version} is untested.*pip install "
                       r"'dkm-tf\[litert\]'"):
        interpreters.default_interpreters(False)


@pytest.fixture(scope="module")
def digits():
    model = digits_cnn()
    palettes = clustered_copy(model, 4)  # K = 4: INT2 indices with decode="per_invoke"
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
    return model, palettes, x


def test_old_tensorflow_export_is_verified_in_litert_with_a_note(tmp_path, monkeypatch, digits):
    model, palettes, x = digits
    monkeypatch.setattr(tf, "__version__", "2.20.0")
    rep = ex.to_tflite(model, tmp_path / "m.tflite", "palettized", palettes, x,
                       decode="per_invoke")
    assert [c.interpreter for c in rep.comparisons] == ["litert"]
    assert all(c.ok for c in rep.comparisons)
    assert any("TensorFlow 2.20.0" in n and "verified with ai_edge_litert only" in n
               for n in rep.notes)
    assert "int2" in {t["storage"] for t in rep.tensors}
    assert (tmp_path / "m.tflite").stat().st_size == rep.bytes


def test_untested_tensorflow_refuses_tf_lite_verification(tmp_path, monkeypatch, digits):
    model, palettes, x = digits
    monkeypatch.setattr(tf, "__version__", "2.18.0")
    with pytest.raises(ValueError, match=r"`interpreters`.*TensorFlow 2\.18\.0 is untested"):
        ex.to_tflite(model, tmp_path / "m.tflite", "float", None, x, interpreters=["tflite"])
    assert not (tmp_path / "m.tflite").exists()


def test_untested_tensorflow_without_litert_refuses_export(tmp_path, monkeypatch, digits):
    model, palettes, x = digits
    monkeypatch.setattr(tf, "__version__", "2.18.0")
    monkeypatch.setattr(verify, "litert_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"TensorFlow 2\.18\.0"):
        ex.to_tflite(model, tmp_path / "m.tflite", "float", None, x)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(interpreters.tflite_unsupported() is not None,
                    reason=f"tf.lite of TensorFlow {tf.__version__} is not used to verify")
def test_current_tensorflow_still_verifies_in_both(tmp_path, digits):
    model, palettes, x = digits
    rep = ex.to_tflite(model, tmp_path / "m.tflite", "palettized", palettes, x,
                       decode="per_invoke")
    assert [c.interpreter for c in rep.comparisons] == ["litert", "tflite"]
    assert not any("verified with" in n for n in rep.notes)


@pytest.mark.parametrize("version", ["3.10.0", "3.15.1", "3.99.0", "3.16.0.dev2026120501", None])
def test_keras_in_the_declared_range_is_accepted(version):
    import dkm_tf  # noqa: PLC0415

    dkm_tf._check_keras_version(version)


@pytest.mark.parametrize("version", ["3.9.2", "3.0.0", "2.15.0", "4.0.0"])
def test_keras_outside_the_declared_range_is_refused_at_first_use(monkeypatch, version):
    import dkm_tf  # noqa: PLC0415

    with pytest.raises(ImportError, match=rf"Keras >= 3\.10, < 4 .*found Keras {version}"):
        dkm_tf._check_keras_version(version)
    monkeypatch.setattr(dkm_tf, "_installed_keras", lambda: version)
    monkeypatch.delitem(vars(dkm_tf), "share_weights", raising=False)
    monkeypatch.delitem(vars(dkm_tf), "export", raising=False)
    with pytest.raises(ImportError, match=f"found Keras {version}"):
        dkm_tf.share_weights  # noqa: B018
    with pytest.raises(ImportError, match=f"found Keras {version}"):
        dkm_tf.export  # noqa: B018
    assert dkm_tf.cluster_values is not None  # numpy-only names: no Keras check


def test_keras_range_matches_setup_cfg():
    import configparser  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parent.parent / "setup.cfg")
    (lo_major, lo_minor), (hi_major, _) = dkm_tf._KERAS_REQUIRED
    assert f"keras>={lo_major}.{lo_minor},<{hi_major}" in cfg["options"]["install_requires"]
    dkm_tf._check_keras_version(dkm_tf._installed_keras())  # this venv's Keras passes


def test_litert_extra_asks_for_a_litert_that_loads_int2():
    import configparser  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parent.parent / "setup.cfg")
    # ai-edge-litert 2.0.3: "Unsupported data type 19 in tensor" on INT2; 2.1.0 loads it
    assert cfg["options.extras_require"]["litert"].split() == ["ai-edge-litert>=2.1"]


def test_compress_without_a_verifying_interpreter_stops_before_training(monkeypatch):
    """`dkm-tf compress` on an untested TensorFlow (< 2.19) without LiteRT stops in its first
    second (it used to train, cluster, then fail at the export). 2.19 / 2.20 go on: their
    tf.lite verifies the formats it runs, and compress lists the others as refused."""
    from dkm_tf import cli, pipeline

    def no_training(*a, **k):
        raise AssertionError("trained before finding that no interpreter can verify the files")

    monkeypatch.setattr(tf, "__version__", "2.18.0")
    monkeypatch.setattr(verify, "litert_available", lambda: False)
    monkeypatch.setattr(pipeline, "train_classifier", no_training)
    with pytest.raises(RuntimeError, match=r"pip install 'dkm-tf\[litert\]'"):
        cli.run_compress(dataset="digits", quiet=True, plots=False)
