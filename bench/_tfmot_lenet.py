"""tfmot peer run for bench/dkm_mnist.py. Runs under tf_keras in its own interpreter.

  TF_USE_LEGACY_KERAS=1 <tfmot-python> bench/_tfmot_lenet.py WEIGHTS.npz MNIST_DIR OUT.json

WEIGHTS.npz holds the baseline LeNet-5 weights (arrays w0, w1, ... in get_weights() order).
Prints nothing but progress; writes the results to OUT.json. The dkm_tf library is not
imported here (it needs Keras 3).
"""

import gzip
import json
import sys
import time

import numpy as np


def _idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_mnist(folder):
    x_tr = _idx(f"{folder}/train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1) / 255.0
    y_tr = _idx(f"{folder}/train-labels-idx1-ubyte.gz", 8).astype(np.int32)
    x_te = _idx(f"{folder}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1) / 255.0
    y_te = _idx(f"{folder}/t10k-labels-idx1-ubyte.gz", 8).astype(np.int32)
    return (x_tr.astype(np.float32), y_tr), (x_te.astype(np.float32), y_te)


def main(weights_path, mnist, out_path):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    keras = tf.keras
    L = keras.layers
    (x_tr, y_tr), (x_te, y_te) = load_mnist(mnist)
    weights = np.load(weights_path)
    weights = [weights[f"w{i}"] for i in range(len(weights.files))]

    def base():
        m = keras.Sequential([
            L.Conv2D(20, 5, input_shape=(28, 28, 1), name="conv1"), L.MaxPooling2D(2),
            L.Conv2D(50, 5, name="conv2"), L.MaxPooling2D(2), L.Flatten(),
            L.Dense(500, activation="relu", name="fc1"), L.Dense(10, name="fc2")])
        m.set_weights(weights)
        return m

    def acc(m):
        return float(np.mean(np.argmax(m.predict(x_te, batch_size=1000, verbose=0), 1) == y_te))

    cluster = tfmot.clustering.keras
    init = cluster.CentroidInitialization.KMEANS_PLUS_PLUS
    rows = [{"recipe": "baseline", "K": None, "acc": acc(base())}]
    recipes = [("tutorial (Adam 1e-5, 1 epoch)", 1e-5, 1), ("best found (Adam 1e-3, 5 epochs)",
                                                          1e-3, 5)]
    for k in (16, 8, 4, 2):
        for name, lr, epochs in recipes:
            if epochs > 1 and k != 2:
                continue
            t = time.perf_counter()
            m = cluster.cluster_weights(base(), number_of_clusters=k,
                                        cluster_centroids_init=init)
            m.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            m.fit(x_tr, y_tr, batch_size=500, epochs=epochs, validation_split=0.1, verbose=0)
            stripped = cluster.strip_clustering(m)
            rows.append({"recipe": name, "K": k, "acc": acc(stripped),
                         "seconds": time.perf_counter() - t})
            print(f"tfmot K={k} {name}: {100 * rows[-1]['acc']:.2f}%", flush=True)
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:4])
