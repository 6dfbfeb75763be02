"""dkm_tf on Keras' PyTorch backend: the scenarios of tests/test_backend_jax.py (training
wrapper, regularizer, callbacks, distillation, post-training sharing, serialization, the export
refusal) and TensorFlow's numbers.

Runs when torch is importable here, or in the interpreter named by ``DKM_TF_TORCH_PYTHON``
(a virtualenv with torch, keras and dkm_tf's own requirements; TensorFlow not needed — it also
shows that training never needs TensorFlow). CI does not install torch (README, "Backends":
the CPU wheel is 192 MB, 895 MB installed, from PyTorch's own index, and its setuptools>=77
requirement upgrades the test venv's setuptools to one without the pkg_resources that the
fer wheel imports).
"""

import importlib.util
import os

import pytest

from tests import _backend_checks as bc

PYTHON = os.environ.get("DKM_TF_TORCH_PYTHON") or None
if PYTHON is None and importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed and DKM_TF_TORCH_PYTHON is not set: the PyTorch "
                "backend is not tested", allow_module_level=True)

@pytest.fixture(scope="module")
def torch_results():
    return bc.run_scenarios("torch", bc.SCENARIOS, python=PYTHON)


@pytest.fixture(scope="module")
def tf_results():
    return bc.run_scenarios("tensorflow", bc.TF_SCENARIOS)


@pytest.mark.parametrize("name", bc.SCENARIOS)
def test_scenario(name, torch_results):
    """wrapper fit + strip, regularizer penalty = numpy reference, callbacks, distillation,
    share_weights, .keras save/load, soft assignment, Fisher weighting, and export refused
    with a clear error (energy works): the checks of tests/_backend_checks.py."""
    bc.check(torch_results, name, "torch")


def test_same_numbers_as_tensorflow(torch_results, tf_results):
    bc.check_same_as_tensorflow(torch_results, tf_results)
