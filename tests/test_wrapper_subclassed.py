"""ClusterWeights inside a subclassed keras.Model (the route cluster_weights' error suggests).

Keras builds a subclassed model by a symbolic pass first, where no variable has a value yet:
the wrapper used to add its codebook and indices there, fail at k-means, and add a second set
at the eager call, so save/load restored the wrong values. Now k-means waits for the first
eager call (or the load), and one set of variables exists.
"""

import keras
import numpy as np
import pytest
from testing import to_numpy

import dkm_tf
from dkm_tf.core import kmeans as kmeans_lib

L = keras.layers


@keras.saving.register_keras_serializable("dkm_tf_tests")
class Net(keras.Model):
    def __init__(self, assignment="hard", **kwargs):
        super().__init__(**kwargs)
        self.assignment = assignment
        extra = {"temperature": 0.05} if assignment == "soft" else {}
        self.d1 = dkm_tf.ClusterWeights(L.Dense(8, name="d1"), n_clusters=4,
                                        assignment=assignment, **extra)
        self.d2 = dkm_tf.ClusterWeights(L.Dense(3, name="d2"), n_clusters=2)

    def call(self, x):
        return self.d2(keras.ops.relu(self.d1(x)))

    def get_config(self):
        return {**super().get_config(), "assignment": self.assignment}


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6)).astype(np.float32), rng.normal(size=(16, 3)).astype(
        np.float32)


def test_one_set_of_variables_and_kmeans_of_the_real_kernel():
    keras.utils.set_random_seed(0)
    x, _ = _data()
    net = Net()
    net(x[:1])
    paths = [v.path for v in net.weights]
    assert len(paths) == len(set(paths)) == 8, paths  # codebook, indices, kernel, bias x 2
    for wrapper in (net.d1, net.d2):
        kernel = to_numpy(wrapper.layer.kernel)
        want, _ = kmeans_lib.cluster_values(kernel.reshape(-1), wrapper.n_clusters, seed=0)
        np.testing.assert_allclose(np.sort(wrapper.palettes()[0].codebook.ravel()),
                                   np.sort(np.asarray(want, np.float32).ravel()), rtol=1e-6)
        shared = to_numpy(wrapper.shared_kernels()["kernel"])
        assert len(np.unique(shared)) <= wrapper.n_clusters


@pytest.mark.parametrize("assignment", ["hard", "soft"])
def test_fit_save_and_load_give_the_same_model(tmp_path, assignment):
    keras.utils.set_random_seed(1)
    x, y = _data()
    net = Net(assignment)
    net(x[:1])
    net.compile("adam", "mse")
    net.fit(x, y, batch_size=4, epochs=2, verbose=0)
    net.save(tmp_path / "net.keras")
    again = dkm_tf.load_model(tmp_path / "net.keras")
    for a, b in zip(net.weights, again.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    np.testing.assert_array_equal(again.predict(x, verbose=0), net.predict(x, verbose=0))


def test_fit_before_any_eager_call_is_a_clear_error():
    x, y = _data()
    net = Net()
    net.compile("adam", "mse")
    with pytest.raises(RuntimeError, match=r"k-means of its 'kernel' has not run yet.*"
                                           r"model\(x\[:1\]\)"):
        net.fit(x, y, epochs=1, verbose=0)
