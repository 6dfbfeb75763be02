"""Follow-ups of the objects probe and its review: a palette pickled the default way (by an
earlier release) is checked and read-only when loaded; ``CompressionResult.to_dict`` no
longer hands out the result's own ``seconds`` / ``calibration`` dicts, and the callbacks
``RefreshKMeans``, ``ReassignClusters`` and ``TemperatureSchedule`` round-trip through
``keras.saving.serialize_keras_object`` with every non-default argument."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402


def test_compression_result_to_dict_is_a_copy():
    from dkm_tf.pipeline import CompressionResult  # noqa: PLC0415

    pal = dkm_tf.cluster_tensor(np.arange(8.0).reshape(2, 4), kind="dense", n_clusters=2,
                                layer_name="fc")
    size = dkm_tf.size_report([pal])
    result = CompressionResult(model=None, palettes=[], skipped=[], size=size, method="wr",
                               seconds={"share": 1.5}, calibration={"samples": 3})
    d = result.to_dict()
    d["seconds"]["share"] = 99.0
    d["calibration"]["samples"] = 0
    assert result.seconds == {"share": 1.5} and result.calibration == {"samples": 3}


@pytest.mark.parametrize("make, attrs", [
    (lambda: dkm_tf.RefreshKMeans(3, 7, log_penalty="batch", verbose=1),
     {"every_n_epochs": 3, "every_n_steps": 7, "log_penalty": "batch", "verbose": 1}),
    (lambda: dkm_tf.ReassignClusters(4, verbose=2), {"every_n_epochs": 4, "verbose": 2}),
    (lambda: dkm_tf.TemperatureSchedule(0.5, 0.01, epochs=6, schedule="linear"),
     {"start": 0.5, "end": 0.01, "epochs": 6, "schedule": "linear"}),
], ids=["RefreshKMeans", "ReassignClusters", "TemperatureSchedule"])
def test_callbacks_round_trip_through_keras_saving(make, attrs):
    cb = make()
    config = keras.saving.serialize_keras_object(cb)
    back = keras.saving.deserialize_keras_object(config)
    assert type(back) is type(cb)
    for name, value in attrs.items():
        assert getattr(back, name) == value, name
    assert back.get_config() == cb.get_config()


def test_palette_pickled_by_an_earlier_release_is_checked_on_load(monkeypatch):
    import pickle  # noqa: PLC0415

    from dkm_tf.core.palette import Palette  # noqa: PLC0415

    pal = dkm_tf.cluster_tensor(np.arange(8.0).reshape(2, 4), kind="dense", n_clusters=2,
                                layer_name="fc")
    monkeypatch.delattr(Palette, "__reduce__")  # the default reduce: a state dict
    good = pickle.dumps(pal)
    tampered = Palette.__new__(Palette)
    tampered.__dict__.update(pal.__dict__)
    object.__setattr__(tampered, "indices", np.full_like(np.array(pal.indices), 200))
    bad = pickle.dumps(tampered)
    monkeypatch.undo()
    back = pickle.loads(good)
    assert not back.indices.flags.writeable and not back.codebook.flags.writeable
    np.testing.assert_array_equal(back.decode(), pal.decode())
    with pytest.raises(ValueError, match="indices"):
        pickle.loads(bad)
