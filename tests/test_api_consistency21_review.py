"""What the review of the API-consistency work found: the padded-codebook limit held per
weight, so a model of many small kernels at a huge K still padded gigabytes (8 Dense 4 -> 4
kernels at K = 2**25: 4.1 GB); a K above the units is now refused when the model's padded
codebooks together pass the limit, and a large K within the units stays allowed. The CLI names
``--model`` (not ``path`` / ``model_or_path``) for a damaged model file in ``compress`` and
``energy``."""

import keras
import pytest

import dkm_tf
from dkm_tf.cli import run
from dkm_tf.training import attach, wrapper_kmeans


def _many_dense(n):
    keras.utils.set_random_seed(0)
    h = inp = keras.Input((4,))
    for i in range(n):
        h = keras.layers.Dense(4, name=f"d{i}")(h)
    return keras.Model(inp, h)


def test_padded_codebooks_are_limited_per_model():
    k = wrapper_kmeans.MAX_PADDED_ENTRIES // 2 + 1  # one kernel's padding fits, two do not
    model = _many_dense(3)
    with pytest.raises(ValueError, match=r"`n_clusters`.*d1/kernel.*other padded codebooks"):
        dkm_tf.cluster_weights(model, k)
    with pytest.raises(ValueError, match=r"`n_clusters`.*besides .* of other weights"):
        dkm_tf.attach_regularizer(model, k, include_dense=True)
    dkm_tf.cluster_weights(_many_dense(1), k)  # one alone is within the limit


def test_large_k_within_the_units_is_not_limited():
    layout = wrapper_kmeans.kmeans_layout((8192, 8192), "dense", "scalar", "per_channel")
    assert wrapper_kmeans.check_padded_codebook(layout, 8192) == 0  # 2**26 entries, no padding
    assert attach._check_padded(2**25, ("scalar", 1, 1, 2**26), "x") == 0


@pytest.mark.parametrize("command", [["compress", "--notflite", "--noplots"], ["energy"]])
def test_damaged_model_file_names_the_flag(tmp_path, capsys, command):
    path = tmp_path / "bad.keras"
    path.write_bytes(b"garbage")
    extra = ["--output_dir", str(tmp_path / "out")] if command[0] == "compress" else []
    rc = run(["dkm-tf", *command, *extra, "--model", str(path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f"Could not load --model '{path}'" in err, err
    assert "argument `path`" not in err and "model_or_path" not in err, err
    assert err.count(str(path)) == 1, err
