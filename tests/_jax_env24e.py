"""The environment of the tests' ``KERAS_BACKEND=jax`` subprocesses.

These tests build many tiny models, and on JAX each ``fit``/``predict`` of a new model compiles
its step with XLA: compiling is most of their CPU time, running the compiled code little. XLA's
LLVM backend at ``-O0`` (``--xla_backend_optimization_level=0``) compiles the same HLO (XLA's
own graph passes, fusion included, are unchanged) to less optimised machine code, IEEE float
semantics kept: measured 2026-12-06 on test_batchnorm.py + test_layers.py on JAX, 34 s of CPU
instead of 55 s, the same 67 tests passing at the same tolerances. An ``XLA_FLAGS`` that already
names an optimization level is left as it is (set ``--xla_backend_optimization_level=3`` there
to test XLA's default code generation).
"""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(environ=None):
    """``XLA_FLAGS`` of ``environ`` (``os.environ`` by default) with LLVM ``-O0`` added."""
    flags = (os.environ if environ is None else environ).get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return flags
    return f"{flags} {FAST_COMPILE}".strip()


def jax_env(**extra):
    """``os.environ`` for a ``KERAS_BACKEND=jax`` subprocess: ``extra`` and fast XLA compile."""
    env = {**os.environ, "KERAS_BACKEND": "jax", **extra}
    env["XLA_FLAGS"] = xla_flags(env)
    return env
