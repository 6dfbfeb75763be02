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


def pytest_collection_modifyitems(config, items):
    """Without ``DKM_TF_SLOW``, a test parametrized over ``batch`` in ``[None, 2]`` runs each
    case at one of the two (dynamic and fixed batch alternate between cases, by a stable hash
    of the case's id): CI was over its 25 minutes with both. ``DKM_TF_SLOW=1`` runs every
    pair. Deterministic, so both xdist workers deselect the same items."""
    import zlib  # noqa: PLC0415

    if os.environ.get("DKM_TF_SLOW"):
        return
    pairs = {}
    for item in items:
        spec = getattr(item, "callspec", None)
        ids = list(getattr(spec, "_idlist", ()))  # one id per parametrize call (pytest 8, 9)
        batch = spec.params.get("batch", 0) if spec is not None else 0
        if batch is not None and (type(batch) is not int or batch != 2):
            continue
        for p, s in enumerate(ids):
            if s == str(batch):  # the batch's own id, with the case's ids beside it
                key = (item.nodeid.split("[")[0], p, tuple(ids[:p] + ids[p + 1:]))
                pairs.setdefault(key, {})[batch] = item
    kept, dropped = set(), set()
    for key in sorted(k for k, v in pairs.items() if len(v) == 2):
        by_batch = pairs[key]
        keep = None if zlib.crc32(repr(key).encode()) % 2 else 2
        drop = by_batch[2 if keep is None else None]
        if id(drop) in kept or id(by_batch[keep]) in dropped:
            continue  # an id read two ways: run both
        kept.add(id(by_batch[keep]))
        dropped.add(id(drop))
    if dropped:
        config.hook.pytest_deselected(items=[i for i in items if id(i) in dropped])
        items[:] = [i for i in items if id(i) not in dropped]


def pytest_report_header(config):
    """Says which tier runs."""
    if os.environ.get("DKM_TF_SLOW"):
        return "DKM_TF_SLOW=1: the full tier"
    return ("DKM_TF_SLOW unset: each case of a [None, 2] batch pair runs at one of the two "
            "(DKM_TF_SLOW=1 runs both)")
