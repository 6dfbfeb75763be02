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
import re

import pytest

from tests import _backend_checks as bc
from tests._jax_env24e import jax_env, xla_flags

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install -e '.[jax]'): the JAX backend is not tested",
                allow_module_level=True)

@pytest.fixture(scope="module")
def jax_results():
    with pytest.MonkeyPatch.context() as mp:  # XLA's fast compile (tests/_jax_env24e.py)
        mp.setenv("XLA_FLAGS", xla_flags())
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


# The main training test files, run as they are on Keras' JAX backend (tests that export or
# test TensorFlow-only code skip there with the reason, via testing.tf_backend_only).
MAIN_TRAINING_TESTS = [
    "test_clustering.py", "test_layers.py", "test_soft.py", "test_fisher.py", "test_refine.py",
    "test_distill.py", "test_regularizers.py", "test_posttrain.py", "test_retrain.py",
    "test_serialization.py", "test_sparsity.py", "test_single_layer.py", "test_batchnorm.py",
    "test_wrapper_subclassed.py", "test_binary_classifier.py", "test_keras_ops_graph.py",
    "test_kernel_clustering.py", "test_recurrent_attention.py", "test_transfer_learning.py",
    # Fisher's loss check: its TensorFlow-only semantics skip. On JAX, 2026-12-07, this shared
    # 2-core machine at load ~5: 34 s wall, 13 s CPU (R6 saw 22.7 s wall under load)
    "test_fisher25.py",
]


def test_main_training_tests_pass_on_jax():
    """Issue 15's acceptance: the main training tests pass on JAX. One pytest process with
    ``KERAS_BACKEND=jax`` runs the files above (``JAX_ENABLE_X64=1``: the numpy references
    of several tests are float64; the models stay float32, Keras' floatx)."""
    import pathlib
    import subprocess
    import sys

    here = pathlib.Path(__file__).parent
    env = jax_env(JAX_ENABLE_X64="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *[str(here / f) for f in MAIN_TRAINING_TESTS]],
        cwd=here.parent, env=env, capture_output=True, text=True, timeout=1500)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]  # "285 passed, 11 skipped in 250s"
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|error)", summary)}
    assert counts.get("passed", 0) > 10 * counts.get("skipped", 0), tail  # mostly run, not skipped


def test_cli_on_jax_refuses_tflite_before_any_work(tmp_path):
    """Found by a probe: on JAX, dkm-tf compress trained and clustered everything, then
    failed in the TFLite step (no report.json). --tflite is now refused first (exit 2)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    env = jax_env()
    proc = subprocess.run([sys.executable, "-m", "dkm_tf.cli", "compress", "--n_clusters", "4",
                           "--output_dir", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "--tflite" in err and "--notflite" in err and "'jax'" in err, err
    assert not out.exists()  # nothing trained or written
