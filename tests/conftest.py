"""Test configuration: quiet TensorFlow's C++ logs before anything imports it."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import pytest  # noqa: E402


@pytest.fixture
def policy():
    """``policy(name)`` sets Keras' global dtype policy; float32 again after the test."""
    import keras  # noqa: PLC0415 (after the log level above)

    try:
        yield keras.mixed_precision.set_global_policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def cf_runs():
    """Skips where Keras cannot run a channels_first conv: TensorFlow's CPU Conv2D is NHWC
    only, and runs NCHW through oneDNN (not with TF_ENABLE_ONEDNN_OPTS=0)."""
    import keras  # noqa: PLC0415 (after the log level above)
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    try:
        keras.layers.Conv2D(1, 1, data_format="channels_first")(np.zeros((1, 1, 2, 2), np.float32))
    except tf.errors.UnimplementedError as e:
        pytest.skip(f"channels_first Conv2D does not run here: {e}")


@pytest.fixture
def clean_modules():
    """Forget the modules a test imports (user files, packages), and the sys.path it had."""
    before, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]
    sys.path[:] = path
