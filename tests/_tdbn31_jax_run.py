"""The ``KERAS_BACKEND=jax`` process of tests/test_tdbn31.py: prints one JSON line.

For each model of tests/test_tdbn31.py that folds: what ``fold_batch_norm`` folded, and the
largest distance of the folded model's outputs (batch 1 and 3, in memory and after a ``.keras``
save / load) to the float64 numpy reference of the unfolded model; the same for the model that
``strip_clustering`` folds, against the clustered model before the strip.
"""

import json
import os
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import test_tdbn31 as t  # noqa: E402

import dkm_tf  # noqa: E402


def _gap(model, ref, x, folder, name):
    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    return max(float(np.abs(np.asarray(m(x[:b])) - ref[:b]).max())
               for m in (model, loaded) for b in (1, 3))


def main():
    out = {"backend": keras.backend.backend()}
    cases = {}
    for flags in [(True, True, True), (False, True, True), (True, False, False),
                  (False, False, False)]:
        model, x = t._video(*flags), t._frames(3)
        cases["video-" + "-".join(map(str, flags))] = (model, x, t._video_ref(model, x))
    model, x = t._first_model(1), t._frames(3, (t.T, t.C, t.H, t.W))
    cases["channels_first"] = (model, x, t._bn(t._conv(x.astype(np.float64),
                                                       model.get_layer("td_conv").layer, True),
                                               model.get_layer("td_bn").layer, 2))
    model, x = t._sequence("dense_then_td_bn"), t._frames(3, (t.T, 4))
    fc, bn = model.get_layer("fc"), model.get_layer("td_bn").layer
    cases["dense_then_td_bn"] = (model, x, t._bn(x.astype(np.float64) @ t._np(fc.kernel)
                                                 + t._np(fc.bias), bn, -1))
    with tempfile.TemporaryDirectory() as folder:
        for name, (model, x, ref) in cases.items():
            result = dkm_tf.fold_batch_norm(model)
            out[name] = {"folded": result.folded, "left": t._batch_norms(result.model),
                         "unfolded_gap": float(np.abs(np.asarray(model(x)) - ref).max()),
                         "gap": _gap(result.model, ref, x, folder, name)}
        model, x = t._video(), t._frames(3)
        with warnings.catch_warnings():  # "... folds into the layer before them"
            warnings.simplefilter("ignore", UserWarning)
            wrapped = dkm_tf.cluster_weights(model, 4)
        plain, palettes = dkm_tf.strip_clustering(wrapped)
        out["strip"] = {"left": t._batch_norms(plain),
                        "gap": _gap(plain, np.asarray(wrapped(x), np.float64), x, folder,
                                    "strip"),
                        "granularity": [p.layout.granularity for p in palettes]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
