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

@pytest.fixture(scope="module")
def jax_results():
    return bc.run_scenarios("jax", bc.SCENARIOS)


@pytest.fixture(scope="module")
def tf_results():
    return bc.run_scenarios("tensorflow", bc.TF_SCENARIOS)


@pytest.mark.parametrize("name", bc.SCENARIOS)
def test_scenario(name, jax_results):
    """wrapper fit + strip, regularizer penalty = numpy reference, callbacks, distillation,
    share_weights, .keras save/load, soft assignment, Fisher weighting, and export refused
    with a clear error (energy works): the checks of tests/_backend_checks.py."""
    bc.check(jax_results, name, "jax")


def test_tensorflow_reference_run(tf_results):
    """The reference itself passes the same checks (and export works on TensorFlow)."""
    for name in ("wrapper", "callbacks", "distill", "share", "soft", "fisher"):
        getattr(bc, f"check_{name}")(bc.scenario(tf_results, name))
    bc.check_regularizer(bc.scenario(tf_results, "regularizer"), "tensorflow")
    out = bc.scenario(tf_results, "export")
    assert out["export"]["ok"] and out["energy"]["ok"], out


def test_same_numbers_as_tensorflow(jax_results, tf_results):
    bc.check_same_as_tensorflow(jax_results, tf_results)
