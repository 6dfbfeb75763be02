"""Code and saved models from the flat layout (before core/graph/training) keep working."""

import importlib
import pathlib
import subprocess
import sys

import pytest

import dkm_tf
from dkm_tf._compat import MOVED

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "v0_1_0_wrapped_regularized"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_path_gives_the_new_objects(old):
    module = importlib.import_module(old)
    for new in MOVED[old]:
        home = importlib.import_module(new)
        assert home.__all__, new
        for name in home.__all__:
            assert getattr(module, name) is getattr(home, name), f"{old}.{name}"
    assert sys.modules[old] is module


def test_old_from_imports_and_attributes():
    from dkm_tf.clustering import cluster_weights, finetune  # noqa: PLC0415
    from dkm_tf.layers import ClusterWeights  # noqa: PLC0415
    from dkm_tf.posttrain import copy_model, share_weights  # noqa: PLC0415
    from dkm_tf.regularizers import SpectralKMeansRegularizer, kmeans_regularizers  # noqa: PLC0415
    from dkm_tf.retrain import attach_regularizer, dkm_retrain  # noqa: PLC0415

    assert cluster_weights is dkm_tf.cluster_weights and finetune is dkm_tf.finetune
    assert ClusterWeights is dkm_tf.ClusterWeights and share_weights is dkm_tf.share_weights
    assert SpectralKMeansRegularizer is dkm_tf.SpectralKMeansRegularizer
    assert kmeans_regularizers is dkm_tf.kmeans_regularizers
    assert attach_regularizer is dkm_tf.attach_regularizer and dkm_retrain is dkm_tf.dkm_retrain
    assert copy_model.__module__ == "dkm_tf.graph.copying"
    # the three numpy modules are public attributes under their old names
    assert dkm_tf.kmeans is importlib.import_module("dkm_tf.core.kmeans")
    assert dkm_tf.units is dkm_tf.core.units and dkm_tf.palette is dkm_tf.core.palette


def test_compat_file_imported_directly_aliases_too():
    # what pytest --doctest-modules and other tools do: import the file by its own path
    module = importlib.import_module("dkm_tf._compat.layers")
    assert module.__file__.endswith("layers.py") and "_compat" in module.__file__
    wrapper = importlib.import_module("dkm_tf.training.wrapper")
    assert module.ClusterWeights is wrapper.ClusterWeights


def test_model_saved_by_the_flat_layout_loads_in_a_fresh_process():
    """``v0_1_0_*.keras`` was written before the restructure: its config names the old modules
    (``dkm_tf.layers``, ``dkm_tf.regularizers``); outputs and attached penalties survive."""
    config = __import__("zipfile").ZipFile(f"{FIXTURE}.keras").read("config.json").decode()
    assert '"module": "dkm_tf.layers"' in config and '"module": "dkm_tf.regularizers"' in config
    code = (
        "import numpy as np, dkm_tf, keras\n"
        f"m = dkm_tf.load_model(r'{FIXTURE}.keras')\n"
        f"ref = np.load(r'{FIXTURE}.npz')\n"
        "np.testing.assert_allclose(m.predict(ref['x'], verbose=0), ref['y'], atol=1e-6)\n"
        "wrapped = [l for l in m.layers if isinstance(l, dkm_tf.ClusterWeights)]\n"
        "assert len(wrapped) == 4, [type(l).__name__ for l in m.layers]\n"
        "regs = [w.layer.kernel_regularizer for w in wrapped if isinstance("
        "w.layer.kernel_regularizer, dkm_tf.SpectralKMeansRegularizer)]\n"
        "m2 = keras.models.load_model(r'" f"{FIXTURE}.keras', safe_mode=True)\n"
        "np.testing.assert_allclose(m2.predict(ref['x'], verbose=0), ref['y'], atol=1e-6)\n"
        "print(len(wrapped), len(regs))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["4", "2"]  # 4 wrapped layers, 2 conv penalties


def test_import_dkm_tf_is_still_light():
    code = ("import sys, dkm_tf, dkm_tf.core, dkm_tf.kmeans; "
            "assert not {'keras', 'tensorflow'} & set(sys.modules), 'heavy'; "
            "print(dkm_tf.__path__[-1].endswith('_compat'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
