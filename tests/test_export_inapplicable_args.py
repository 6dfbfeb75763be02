"""to_tflite refuses, before any work, an argument given a non-default value where the format
does not use it (``decode`` with ``format="int8"``, ``keep_float=None`` with
``decode="per_invoke"``, ...); the default passed explicitly still exports; ``export_all`` and
the ``export/to_tflite.py`` tool pass each format only what applies to it."""

import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import dkm_tf
import dkm_tf.export as ex
from dkm_tf.export import cli, verify
from dkm_tf.export import convert as convert_lib
from dkm_tf.export.policy import APPLIES, inapplicable

ROOT = pathlib.Path(__file__).resolve().parent.parent
X = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    """A 4 -> 8 -> 3 Dense model with its weights clustered to K = 4, and its palettes."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d1"),
                              keras.layers.Dense(3, name="d2")], name="tiny")
    shared, palettes, _ = dkm_tf.share_weights(model, 4)
    return shared, palettes


# (format, the inapplicable argument, its value, other arguments)
CASES = [
    ("int8", "decode", "per_invoke", {}),
    ("float", "decode", "per_invoke", {}),
    ("tflm", "decode", "per_invoke", {}),
    ("palettized", "int8_mode", "full", {}),
    ("fp16", "int8_mode", "full", {}),
    ("palettized", "int8_scales", "shared", {}),
    ("int8", "int8_scales", "shared", {"palettes": None}),  # shared needs palettes
    ("int8", "representative_data", X, {}),  # dynamic int8 does not calibrate
    ("palettized", "representative_data", X, {}),
    ("tflm", "keep_float", None, {}),
    ("palettized", "keep_float", None, {"decode": "per_invoke"}),
    ("float", "keep_float", 0.1, {}),
    ("int8", "kept_dtype", "float16", {}),
    ("palettized", "kept_dtype", "float16", {"decode": "per_invoke"}),
    ("palettized", "kept_dtype", "float16", {"keep_float": None}),  # keeps nothing
    ("palettized", "kept_dtype", "float16", {"keep_float": []}),
    ("palettized", "index_packing", "tuples", {"decode": "per_invoke"}),
    ("tflm", "index_packing", "tuples", {}),
    ("palettized", "max_table_bytes", 4096, {"decode": "per_invoke"}),
    ("fp16", "max_table_bytes", 4096, {}),
    ("palettized", "matmul_lowering", False, {"decode": "per_invoke"}),
    ("int8", "matmul_lowering", False, {}),
    ("tflm", "interpreters", ["tflite"], {}),
]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if to_tflite gets as far as running Keras or converting."""
    def refuse(*args, **kwargs):
        raise AssertionError("to_tflite did work before refusing an inapplicable argument")

    monkeypatch.setattr(convert_lib, "convert", refuse)
    monkeypatch.setattr(verify, "keras_outputs", refuse)


@pytest.mark.parametrize("fmt, name, value, extra", CASES,
                         ids=[f"{c[1]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_inapplicable_argument_is_refused_before_any_work(tiny, tmp_path, no_work, fmt, name,
                                                          value, extra):
    shared, palettes = tiny
    path = tmp_path / "m.tflite"
    kwargs = {"palettes": palettes, **extra, name: value}
    with pytest.raises(ValueError, match=rf"Argument `{name}` applies only to .*Received: "
                                         rf"{name}=.* with format='{fmt}'") as info:
        ex.to_tflite(shared, path, fmt, sample_inputs=X, **kwargs)
    assert "leave it at its default" in str(info.value)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_every_conditional_argument_has_a_case():
    assert {c[1] for c in CASES} == set(APPLIES)


def test_a_bad_value_is_still_named_as_such(tiny, tmp_path, no_work):
    """An invalid value gets the invalid-value message, whatever the format."""
    shared, palettes = tiny
    with pytest.raises(ValueError, match=r"Invalid value for argument `decode`.*'lazy'"):
        ex.to_tflite(shared, tmp_path / "m.tflite", "int8", decode="lazy")
    with pytest.raises(ValueError, match=r"Invalid value for argument `kept_dtype`"):
        ex.to_tflite(shared, tmp_path / "m.tflite", "float", kept_dtype="bf16")


def test_export_targets_and_defaults_apply_everywhere():
    """EXPORT_TARGETS (export_all, dkm-tf compress) pass only what applies; defaults always do."""
    defaults = {name: default for name, (default, *_rest) in APPLIES.items()}
    for label, kwargs in ex.EXPORT_TARGETS.items():
        assert inapplicable({**defaults, "palettes": [object()], **kwargs}) == [], label
    for fmt in ex.FORMATS:
        assert inapplicable({**defaults, "palettes": None, "format": fmt}) == [], fmt


def test_defaults_passed_explicitly_still_export(tiny, tmp_path):
    shared, palettes = tiny
    defaults = {name: default for name, (default, *_rest) in APPLIES.items()}
    r = ex.to_tflite(shared, tmp_path / "f.tflite", "float", palettes, X, **defaults)
    assert r.format == "float" and pathlib.Path(r.path).exists()
    r = ex.to_tflite(shared, tmp_path / "p.tflite", "palettized", palettes, X,
                     **{**defaults, "decode": "per_invoke"})
    assert r.variant == "per_invoke" and all(c.ok for c in r.comparisons)


def test_export_all_forwards_per_format(tiny, tmp_path):
    """Shared palettes, a non-default decode and keep_float=None side by side with float."""
    shared, palettes = tiny
    reports = ex.export_all(shared, palettes, str(tmp_path), X, stem="t",
                            targets=["float", "palettized_per_invoke", "palettized_all"])
    assert {k: (r.format, r.variant) for k, r in reports.items()} == {
        "float": ("float", ""), "palettized_per_invoke": ("palettized", "per_invoke"),
        "palettized_all": ("palettized", "once")}
    assert all(pathlib.Path(r.path).exists() for r in reports.values())


def test_run_to_tflite_refuses_before_loading(tmp_path):
    """The model file is not even read: the refusal comes first."""
    missing = tmp_path / "absent.keras"
    with pytest.raises(ValueError, match=r"`decode` applies only to format='palettized'.*"
                                         r"decode='per_invoke' with format='int8'"):
        cli.run_to_tflite(missing, format="int8", decode="per_invoke")
    with pytest.raises(ValueError, match=r"`keep_float` applies only to .*decode='once'.*"
                                         r"keep_float=None with format='palettized', "
                                         r"decode='per_invoke'"):
        cli.run_to_tflite(missing, decode="per_invoke", keep_float="none")
    with pytest.raises(ValueError, match=r"Invalid value for argument `format`"):
        cli.run_to_tflite(missing, format="int4", decode="per_invoke")


def test_inapplicable_flags():
    assert cli.inapplicable_flags("int8") == []
    assert cli.inapplicable_flags("int8", decode="once", keep_float="auto") == []
    assert cli.inapplicable_flags("palettized", decode="per_invoke", kept_dtype="float32") == []
    (line,) = cli.inapplicable_flags("int8", decode="per_invoke")
    assert line.startswith("Invalid flag `--decode`") and "--format=palettized" in line
    assert line.endswith("Received: --decode=per_invoke with --format=int8")
    (line,) = cli.inapplicable_flags("palettized", keep_float="none", kept_dtype="float16")
    assert "`--kept_dtype`" in line
    assert line.endswith("--kept_dtype=float16 with --format=palettized --decode=once "
                         "--keep_float=none")
    names = [ln.split("`")[1] for ln in cli.inapplicable_flags(
        "fp16", decode="per_invoke", int8_mode="full", keep_float="0.1",
        index_packing="tuples")]
    assert names == ["--decode", "--keep_float", "--index_packing", "--int8_mode"]


def test_script_inapplicable_flag_is_a_usage_error(tmp_path):
    out = tmp_path / "o.tflite"
    res = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_tflite.py"), f"--model={tmp_path / 'm.keras'}",
         "--format=int8", "--int8_mode=full", "--decode=per_invoke", f"--output={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr[-2000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("to_tflite.py")]
    assert ours == ["to_tflite.py: error: Invalid flag `--decode`: it applies only to "
                    "--format=palettized; leave it out otherwise. Received: "
                    "--decode=per_invoke with --format=int8"], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not out.exists()
