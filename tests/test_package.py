"""Package-level contracts: no import side effects, flat API, no tfmot."""

import pathlib
import subprocess
import sys

import dkm_tf

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_has_no_side_effects():
    code = ("import os, sys; before = dict(os.environ); import dkm_tf; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy'; "
            "assert dict(os.environ) == before, 'env changed'; print(dkm_tf.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == dkm_tf.__version__


def test_every_public_name_resolves():
    for name in dkm_tf.__all__:
        assert getattr(dkm_tf, name) is not None, name
    assert sorted(dkm_tf.__all__) == dkm_tf.__all__


def test_library_never_imports_tfmot():
    offenders = [str(p) for p in (ROOT / "dkm_tf").rglob("*.py")
                 if "tensorflow_model_optimization" in p.read_text()]
    assert offenders == []
