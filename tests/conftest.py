"""Test configuration: quiet TensorFlow's C++ logs before anything imports it."""

import os

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
