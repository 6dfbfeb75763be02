"""Review R8 of the Keras-named ``.tflite`` inputs (:mod:`dkm_tf.export.io_names`).

Before these fixes: the export's verification fed the file by subgraph position
(:func:`~dkm_tf.export.io_names.file_keys`), so a renaming that put the names on the wrong
inputs still verified (reversed keys: report rel 0.0, ``runner(zeta=x, alpha=y)`` off by
1.85), and a signature other than ``input_0 .. input_{n-1}`` kept those names silently; a
fallback ``input_i`` could take a later input's sanitised name (``["1st", "input-0"]`` ->
``input_0``, ``input_0_2``: the key ``input_0`` fed the input named ``"1st"``); a
``sample_inputs`` dict error listed the Keras names only.
"""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from test_inputnamesfix29 import _concat_dense, _numpy

import dkm_tf.export.convert as convert_lib
from dkm_tf.export import to_tflite
from dkm_tf.export.io_names import file_keys, name_inputs, signature_keys

pytest.importorskip("tensorflow")

RNG = np.random.default_rng(2292)


def _xs(n, width=4):
    return [RNG.normal(size=(3, width)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(("names", "keys"), [
    (["1st", "input-0"], ["input_0_2", "input_0"]),
    (["x-y", "1st", "input:1"], ["x_y", "input_1_2", "input_1"]),
    (["1st", "input_0"], ["input_0_2", "input_0"]),  # a usable name, as before
])
def test_a_fallback_never_takes_another_inputs_sanitised_name(tmp_path, names, keys):
    assert signature_keys(names) == keys  # was ['input_0', 'input_0_2'] for the first
    model = _concat_dense(names, seed=3)
    xs = _xs(len(names))
    path = tmp_path / "m.tflite"
    report = to_tflite(model, path, format="float", sample_inputs=xs)
    assert report.max_rel_error < 1e-5
    content = path.read_bytes()
    assert file_keys(content) == keys
    got = Interpreter(model_content=content).get_signature_runner()(
        **dict(zip(keys, xs)))["output_0"]
    np.testing.assert_allclose(got, _numpy(model, xs), rtol=1e-5, atol=1e-6)


def _swapping(content, keys):
    """A wrong renaming: input ``i`` gets the last-but-``i`` key."""
    return name_inputs(content, list(keys)[::-1])


def _silent(content, keys):
    """A renaming that gives up silently: the file keeps ``input_i``."""
    del keys
    return bytes(content)


@pytest.mark.parametrize("mutant", [_swapping, _silent])
def test_a_wrong_renaming_is_an_internal_error_not_a_verified_file(tmp_path, monkeypatch,
                                                                    mutant):
    model = _concat_dense(["alpha", "zeta"], seed=4)
    xs = _xs(2)
    monkeypatch.setattr(convert_lib, "name_inputs", mutant)
    path = tmp_path / "m.tflite"
    with pytest.raises(RuntimeError, match="Internal error exporting to .tflite"):
        to_tflite(model, path, format="float", sample_inputs=xs)  # verified rel 0.0
    assert not path.exists()


def test_a_signature_other_than_input_i_is_an_internal_error(tmp_path, monkeypatch):
    # a converter that no longer keeps the names given: before, the file kept them silently
    real = convert_lib.canonicalize

    def renamed(content):
        return name_inputs(real(content), ["p", "q"])

    monkeypatch.setattr(convert_lib, "canonicalize", renamed)
    model = _concat_dense(["alpha", "zeta"], seed=5)
    with pytest.raises(RuntimeError, match=r"signature inputs \['input_0', 'input_1'\]"):
        to_tflite(model, tmp_path / "m.tflite", format="float", sample_inputs=_xs(2))


def test_a_dict_error_lists_the_files_keys_where_they_differ(tmp_path):
    model = _concat_dense(["1st", "input-0"], seed=6)
    xs = _xs(2)
    with pytest.raises(ValueError, match=r"names \['1st', 'input-0'\] \(or the file's keys "
                                         r"\['input_0_2', 'input_0'\]\)\. Received"):
        to_tflite(model, tmp_path / "a.tflite", format="float",
                  sample_inputs={"a": xs[0], "b": xs[1]})
    report = to_tflite(model, tmp_path / "b.tflite", format="float",
                       sample_inputs={"input_0_2": xs[0], "input_0": xs[1]})
    assert report.max_rel_error < 1e-5
    same = _concat_dense(["tok", "feat"], seed=6)
    with pytest.raises(ValueError, match=r"names \['tok', 'feat'\]\. Received") as info:
        to_tflite(same, tmp_path / "c.tflite", format="float",
                  sample_inputs={"a": xs[0], "b": xs[1]})
    assert "file's keys" not in str(info.value)
