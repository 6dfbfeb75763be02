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

NAMES = ("wrapper", "regularizer", "callbacks", "distill", "share", "serialize", "export",
         "soft", "fisher")


@pytest.fixture(scope="module")
def torch_results():
    return bc.run_scenarios("torch", NAMES, python=PYTHON)


@pytest.fixture(scope="module")
def tf_results():
    return bc.run_scenarios("tensorflow", bc.TF_SCENARIOS)


def test_wrapper_fit_and_strip(torch_results):
    bc.check_wrapper(bc.scenario(torch_results, "wrapper"))


def test_regularizer_penalty_equals_numpy_reference(torch_results):
    bc.check_regularizer(bc.scenario(torch_results, "regularizer"), "torch")


def test_callbacks(torch_results):
    bc.check_callbacks(bc.scenario(torch_results, "callbacks"))


def test_distillation(torch_results):
    bc.check_distill(bc.scenario(torch_results, "distill"))


def test_keras_save_and_load(torch_results):
    bc.check_serialize(bc.scenario(torch_results, "serialize"))


def test_share_weights(torch_results):
    bc.check_share(bc.scenario(torch_results, "share"))


def test_soft_assignment(torch_results):
    bc.check_soft(bc.scenario(torch_results, "soft"))


def test_fisher_weighted_share_weights(torch_results):
    bc.check_fisher(bc.scenario(torch_results, "fisher"))


def test_export_refused_with_a_clear_error_energy_works(torch_results):
    bc.check_export_refused(bc.scenario(torch_results, "export"), "torch")


def test_same_numbers_as_tensorflow(torch_results, tf_results):
    names = [n for n in bc.TF_SCENARIOS if "unavailable" not in tf_results[n]]
    for name in names:
        bc.scenario(torch_results, name)
        bc.scenario(tf_results, name)
    bc.check_same_numerics(torch_results, tf_results, names)
