"""Keras' own noise floor per output (session 26): one number, the largest over the outputs,
raised every output's default tolerance, so a deep or batch-dependent output's noise let a
float file with a shallow head beside it 1e-4 off be written; and a refusal said a tolerance
the noise floor raised came "from its own depth or sum length". Since h27 no noise floor is
applied (each run of the file is compared with Keras at its own batch, ``export.keras_ref``):
these tests hold the per-output tolerances to their depths."""

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.export import convert as convert_lib  # noqa: E402
from dkm_tf.export import verify  # noqa: E402
from tests._depth26 import BatchMix, dense_chain  # noqa: E402

pytestmark = tf_backend_only()


def _samples():
    return np.random.default_rng(0).normal(size=(5, 6)).astype("float32")


def _noisy_beside_quiet():
    """Output 0 batch-dependent (its noise ~1e-4), output 1 a quiet Dense head."""
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    noisy = BatchMix(name="mix")(keras.layers.Dense(4)(i))
    return keras.Model(i, [noisy, keras.layers.Dense(3, name="head")(i)])


def _noises(model, x):
    """Per output, max |batch-1 outputs - batch-5 outputs| / max |batch-5 outputs| (numpy)."""
    ref = [np.asarray(r, np.float64) for r in model(x)]
    one = [model(x[i:i + 1]) for i in range(len(x))]
    per = [np.concatenate([np.asarray(o[k], np.float64) for o in one]) for k in range(len(ref))]
    return [float(np.abs(p - r).max() / np.abs(r).max()) for p, r in zip(per, ref)]


def _shifted(model, x, layer, rel, output):
    """The float file of ``model`` with ``layer``'s bias shifted by ``rel`` x max |keras| of
    ``output``: that output is ``rel`` off (checked in LiteRT), the others exact."""
    ref = np.asarray(model(x)[output], np.float64)
    wrong = keras.models.clone_model(model)
    wrong.set_weights(model.get_weights())
    bias = wrong.get_layer(layer).bias
    bias.assign(bias.numpy() + rel * float(np.abs(ref).max()))
    content = convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none")
    got = [np.asarray(g, np.float64) for g in verify.run_tflite(content, [x], "litert")]
    ref1 = np.concatenate([np.asarray(model(x[i:i + 1])[output]) for i in range(len(x))])
    assert np.abs(got[output] - ref1).max() / np.abs(ref1).max() == pytest.approx(rel, rel=0.1)
    return content


def test_keras_noise_per_output_raises_each_output_by_its_own():
    model, x = _noisy_beside_quiet(), _samples()
    want = _noises(model, x)
    assert 2e-5 < want[0] < 1e-3 and want[1] < 1e-7  # the Dense head is batch-exact
    got = verify.keras_noise(model, [x], verify.keras_outputs(model, [x]), per_output=True)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-9)
    assert verify.keras_noise(model, [x], verify.keras_outputs(model, [x])) == max(got)
    notes = []
    raised = verify.noise_floor((1e-5, 1e-5), got, 5, notes)
    assert raised == pytest.approx((10 * got[0], 1e-5))
    assert "output 0" in notes[0] and "output 1" not in notes[0] and "batch-5" in notes[0]
    assert verify.noise_floor(1e-5, got, 5, []) == pytest.approx((10 * got[0], 1e-5))
    assert verify.noise_floor(1e-2, got, 5, notes) == 1e-2 and len(notes) == 1
    assert verify.noise_floor(1e-5, [got[0]], 5, []) == pytest.approx(10 * got[0])  # 1 output


def test_quiet_head_beside_a_noisy_output_keeps_its_own_tolerance(tmp_path):
    """The parent raised both outputs to 10x output 0's noise (~1e-3) and wrote a file whose
    head is 1e-4 off; the head's own tolerance is 1e-5."""
    model, x = _noisy_beside_quiet(), _samples()
    content = _shifted(model, x, "head", 1e-4, 1)
    path = tmp_path / "m.tflite"
    with pytest.raises(verify.ExportVerificationError, match=r"relative 0\.0001 \(tolerance "
                       r"1e-05\)"):  # h27: both outputs 1e-5 (no noise floor), one number
        dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x, float_content=content)
    assert not path.exists()
    right = dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x)  # its own file
    assert all(c.tolerance == 1e-5 and c.ok for c in right.comparisons)
    assert any("depend on the batch (output 0" in n and "output 1" not in n
               for n in right.notes)


def test_a_file_off_by_10x_an_outputs_noise_is_refused_at_its_own_tolerance(tmp_path):
    """A noisy 1-deep output beside a 20-deep one (4e-5): session 26 raised its tolerance to
    10x its noise and refused a file 10x further off saying so; since h27 the file is compared
    with Keras at its own batch, so the output keeps its own 1e-5 and the refusal says that."""
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    mix = BatchMix(2.5e-6, name="mix")(keras.layers.Dense(3, name="head")(i))
    model = keras.Model(i, [dense_chain(i, 20), mix])
    x = _samples()
    noise = _noises(model, x)
    assert 1e-5 < 10 * noise[1] < 4e-5 and 10 * noise[0] < 1e-5
    content = _shifted(model, x, "head", 100 * noise[1], 1)
    with pytest.raises(verify.ExportVerificationError, match="output 1: relative") as err:
        dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", "float", sample_inputs=x,
                                float_content=content)
    assert "its tolerance 1e-05, from its own depth or sum length" in str(err.value)
    assert "from 10x Keras' own" not in str(err.value)


def test_held_out_clear_failure_reads_each_output_against_its_own_tolerance():
    """With per-output tolerances (now also int8's, raised by one output's noise), the
    held-out check compared the largest error with the largest tolerance: a quiet output 1.4x
    its own 0.5 beside a noisy one's 1.0 was not a clear failure."""
    from dkm_tf.export.held_out import clear_failure

    def comp(rels, tols):
        return verify.Comparison("litert", max(rels), max(rels), max(tols), 4,
                                 output_tolerances=tols, output_rel_errors=rels)

    assert clear_failure(comp((0.1, 0.7), (1.0, 0.5)))  # 0.7 / 0.5 = 1.4 > 1.15
    assert not clear_failure(comp((1.1, 0.5), (1.0, 0.5)))  # 1.1 and 1.0: within 1.15
    assert clear_failure(comp((1.2, 0.1), (1.0, 0.5)))
