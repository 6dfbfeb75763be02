"""dkm_tf on Keras' JAX backend: training wrapper, regularizer, callbacks, distillation,
post-training sharing, serialization, and the same numbers as on TensorFlow.

Keras chooses its backend at import, so every scenario runs in a subprocess started with
``KERAS_BACKEND=jax`` (tests/_backend_scenarios.py, one process for all of them) and these
tests assert on its JSON output; the TensorFlow run of the same scenarios (same numpy-drawn
weights and data, same seeds) is the reference for the cross-backend comparison. Export stays
TensorFlow-only: from a JAX process it must fail with a clear error. Skipped when jax is not
installed (``pip install -e ".[jax]"``).
"""

import importlib.util

import pytest

from tests import _backend_checks as bc

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install -e '.[jax]'): the JAX backend is not tested",
                allow_module_level=True)

ALL = ("wrapper", "regularizer", "callbacks", "distill", "share", "serialize", "export",
       "soft", "fisher")


@pytest.fixture(scope="module")
def jax_results():
    return bc.run_scenarios("jax", ALL)


@pytest.fixture(scope="module")
def tf_results():
    return bc.run_scenarios("tensorflow", bc.TF_SCENARIOS)


def test_wrapper_fit_and_strip(jax_results):
    bc.check_wrapper(bc.scenario(jax_results, "wrapper"))


def test_regularizer_penalty_equals_numpy_reference(jax_results):
    bc.check_regularizer(bc.scenario(jax_results, "regularizer"), "jax")


def test_callbacks(jax_results):
    bc.check_callbacks(bc.scenario(jax_results, "callbacks"))


def test_distillation(jax_results):
    bc.check_distill(bc.scenario(jax_results, "distill"))


def test_share_weights(jax_results):
    bc.check_share(bc.scenario(jax_results, "share"))


def test_keras_save_and_load(jax_results):
    bc.check_serialize(bc.scenario(jax_results, "serialize"))


def test_soft_assignment(jax_results):
    bc.check_soft(bc.scenario(jax_results, "soft"))


def test_fisher_weighted_share_weights(jax_results):
    bc.check_fisher(bc.scenario(jax_results, "fisher"))


def test_export_refused_with_a_clear_error_energy_works(jax_results):
    bc.check_export_refused(bc.scenario(jax_results, "export"), "jax")


def test_tensorflow_reference_run(tf_results):
    """The reference itself passes the same checks (and export works on TensorFlow)."""
    for name in ("wrapper", "callbacks", "distill", "share", "soft", "fisher"):
        getattr(bc, f"check_{name}")(bc.scenario(tf_results, name))
    bc.check_regularizer(bc.scenario(tf_results, "regularizer"), "tensorflow")
    out = bc.scenario(tf_results, "export")
    assert out["export"]["ok"] and out["energy"]["ok"], out


def test_same_numbers_as_tensorflow(jax_results, tf_results):
    names = [n for n in bc.TF_SCENARIOS if "unavailable" not in tf_results[n]]
    for name in names:
        bc.scenario(jax_results, name)
        bc.scenario(tf_results, name)
    bc.check_same_numerics(jax_results, tf_results, names)
