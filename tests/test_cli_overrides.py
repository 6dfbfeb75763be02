"""``dkm-tf compress --overrides``: per-layer settings as inline JSON or a .json file.

Every bad value is one usage line (exit 2) naming --overrides, before any training or file
work; keys are checked against the model's layers (close matches named) before any training
or k-means. The K of each layer in the exported .tflite files is read back from the files
themselves (distinct stored values per tensor, numpy), and a layer set to null stays float.
"""

import io
import json

import numpy as np
import pytest
from testing import small_cnn

from dkm_tf import cli, pipeline
from dkm_tf.cli_args import CliUsageError, help_text
from dkm_tf.cli_overrides import EXAMPLE, parse_overrides


def _run(capsys, *args, out_dir):
    """``dkm-tf compress args --quiet`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", *args, "--output_dir", str(out_dir), "--quiet"],
                 stdout=out, stderr=err)
    return rc, capsys.readouterr().out + out.getvalue(), err.getvalue()


def _usage_line(rc, err):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    assert lines[0].startswith("dkm-tf: error: invalid --overrides: expected "), lines[0]
    return lines[0]


def test_inline_and_file_forms_parse_to_the_same_dict(tmp_path):
    spec = {"conv1": {"n_clusters": 8}, "fc2": None}
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(spec, indent=2))
    assert parse_overrides(json.dumps(spec)) == spec
    assert parse_overrides("  \n" + json.dumps(spec)) == spec  # leading blanks: still inline
    assert parse_overrides(str(path)) == spec
    assert parse_overrides(spec) == spec  # run_compress(overrides={...}) from Python
    assert parse_overrides(None) is None
    assert parse_overrides(EXAMPLE.strip("'")) == spec  # the --help example is valid


def test_help_documents_the_flag_with_an_example():
    lines = [line for line in help_text("compress").splitlines()
             if line.startswith("  --overrides")]
    assert len(lines) == 1
    assert "JSON" in lines[0] and ".json file" in lines[0] and "null" in lines[0]
    assert "--overrides '{\"conv1\": {\"n_clusters\": 8}, \"fc2\": null}'" in lines[0]


@pytest.mark.parametrize("value, expected, received", [
    ('{"conv1": {"n_clusters": 8}', "valid JSON", "line 1, column 28"),
    ('{"conv1": null, "conv1": {"n_clusters": 2}}', "naming each layer once", "'conv1' twice"),
    ('{"conv1": {"n_clusters": NaN}}', "no NaN", "'NaN'"),
    ("[1, 2]", "text starting with '{') or the path of a .json file", "'[1, 2]'"),
    ("layers.txt", "the path of a .json file", "'layers.txt'"),
    ("", "the path of a .json file", "''"),
    ("missing.json", "an existing .json file", "'missing.json'"),
    ('{"conv1": 8}', 'null or an object of settings for "conv1"', "conv1: 8"),
    ('{"": null}', "non-empty strings", "''"),
    ('{"conv1": {"nclusters": 8}}', "option names among ['n_clusters', 'unit', 'granularity', "
     "'init', 'preserve_sparsity'] in \"conv1\" with --method finetune", "'nclusters'"),
    ('{"conv1": {"latent": true}}', "option names among", "'latent'"),
    ('{"conv1": {"sparsity": 0.5}}', "sparsity: --method wr or dkm only", "'sparsity'"),
    ('{"conv1": {"n_clusters": 0}}', "Expected an integer >= 1", "{'n_clusters': 0}"),
    ('{"conv1": {"n_clusters": 8.0}}', "of type float", "{'n_clusters': 8.0}"),
    ('{"conv1": {"n_clusters": "8"}}', "of type str", "{'n_clusters': '8'}"),
    ('{"conv1": {"n_clusters": 70000}}', "n_clusters in [1, 65536]", "70000"),
    ('{"conv1": {"unit": "filter"}}', "Expected one of ['scalar', 'row', 'kernel', 'auto']",
     "{'unit': 'filter'}"),
    ('{"conv1": {"granularity": "per_row"}}', "['per_tensor', 'per_channel']", "per_row"),
    ('{"conv1": {"preserve_sparsity": 1}}', "Expected a bool", "{'preserve_sparsity': 1}"),
])
def test_bad_overrides_are_one_usage_line_before_any_work(tmp_path, capsys, value, expected,
                                                          received):
    rc, out, err = _run(capsys, "--overrides", value, out_dir=tmp_path / "out")
    line = _usage_line(rc, err)
    assert expected in line and received in line, line
    assert out == "" and not (tmp_path / "out").exists()  # no data read, nothing written


@pytest.mark.parametrize("content, expected, received", [
    ('{"conv1": {"n_clusters": 4},\n "fc2": nul}', "valid JSON", "line 2, column 9"),
    ("[1]\n", "a JSON object {layer or class name", "list: "),
    ("", "valid JSON", "line 1, column 1"),
])
def test_bad_json_file_names_the_file_and_the_position(tmp_path, capsys, content, expected,
                                                       received):
    path = tmp_path / "layers.json"
    path.write_text(content)
    rc, _, err = _run(capsys, "--overrides", str(path), out_dir=tmp_path / "out")
    line = _usage_line(rc, err)
    assert expected in line and received in line and str(path) in line, line
    (tmp_path / "folder.json").mkdir()
    rc, _, err = _run(capsys, "--overrides", str(tmp_path / "folder.json"),
                      out_dir=tmp_path / "out")
    assert "a .json file, not a folder" in _usage_line(rc, err)


@pytest.mark.parametrize("args, expected", [
    (["--method", "dkm+finetune", "--overrides", '{"conv1": {"sparsity": 0.2}}'],
     "option names among ['n_clusters', 'unit', 'granularity', 'init', 'preserve_sparsity']"),
    (["--method", "wr", "--overrides", '{"conv1": {"sparsity": 1.5}}'],
     "Expected a fraction in [0, 1)"),
    (["--method", "wr", "--overrides", '{"conv1": {"sparsity": 0.3, "preserve_sparsity": true}}'],
     "Expected 0 with preserve_sparsity=True"),
    (["--refine", "outputs", "--overrides", '{"conv1": {"sparsity": 0.2}}'],
     "with refine='outputs': it would be ignored"),
    (["--weighting", "fisher", "--overrides", '{"conv1": {"init": "linear"}}'],
     "with weighting='fisher': it would be ignored"),
    (["--unit", "kernel", "--codebook", "shared", "--overrides", '{"conv1": {"n_clusters": 4}}'],
     "only null entries with --unit kernel --codebook shared"),
])
def test_settings_a_method_cannot_take_are_refused_from_the_flags(tmp_path, capsys, args,
                                                                  expected):
    rc, out, err = _run(capsys, *args, out_dir=tmp_path / "out")
    assert expected in _usage_line(rc, err)
    assert out == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, expected", [
    ('{"conv": {"n_clusters": 4}}', "Close matches: 'conv' -> ['conv2', 'conv1', 'Conv2D']"),
    ('{"Functional": {"n_clusters": 4}}', "match no layer name or layer class name"),
    ('{"pool": {"n_clusters": 4}}', "'pool' names only MaxPooling2D layer(s), never clustered"),
])
def test_keys_not_naming_layers_are_refused_before_training(tmp_path, capsys, overrides,
                                                            expected):
    rc, out, err = _run(capsys, "--epochs", "1", "--overrides", overrides, out_dir=tmp_path / "out")
    line = _usage_line(rc, err)
    assert "keys naming layers or layer classes of model 'digits_cnn'" in line, line
    assert expected in line, line
    assert "[data]" in out and "[train]" not in out  # the model was built, not trained
    assert not (tmp_path / "out").exists()


def test_a_unit_the_retraining_did_not_use_is_refused_before_training(tmp_path, capsys):
    """The re-training regularizes every layer with one unit: a per-layer unit that resolves
    to another one is refused once the model is built (its layers say how a unit resolves:
    "row" is "scalar" for a Dense kernel), before any training."""
    rc, out, err = _run(capsys, "--method", "dkm", "--epochs", "1", "--overrides",
                        '{"conv1": {"unit": "row"}}', out_dir=tmp_path / "out")
    line = _usage_line(rc, err)
    assert "Expected no 'unit' other than 'scalar' with method='dkm'" in line, line
    assert "[data]" in out and "[train]" not in out and not (tmp_path / "out").exists()


def test_user_model_keys_are_checked_after_loading_before_any_kmeans(tmp_path, capsys):
    path = tmp_path / "user.keras"
    small_cnn().save(path)
    rc, out, err = _run(capsys, "--model", str(path), "--notflite", "--overrides",
                        '{"outt": {"n_clusters": 2}}', out_dir=tmp_path / "out")
    line = _usage_line(rc, err)
    assert "of model 'small_cnn'" in line and "'outt' -> ['out']" in line, line
    assert "[model]" in out and "[k-means]" not in out and not (tmp_path / "out").exists()


def test_python_callers_get_the_same_checks(tmp_path):
    with pytest.raises(CliUsageError, match=r"non-empty strings\); received 1"):
        cli.run_compress(None, overrides={1: None}, output_dir=str(tmp_path / "o"))
    with pytest.raises(CliUsageError, match="at the top level"):
        cli.run_compress(None, overrides=[("conv1", None)], output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_energy_refuses_overrides(tmp_path):
    path = tmp_path / "user.keras"
    small_cnn().save(path)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "energy", "--model", str(path), "--overrides", "{}"],
                 stdout=out, stderr=err)
    assert rc == 2 and "--overrides" in err.getvalue()


def _flat(path):
    """{layer name: float32 weight array} of the constant tensors of a .tflite file."""
    from dkm_tf.export.rewrite import FlatModel

    fm = FlatModel.from_bytes(path.read_bytes())
    out = {}
    for t in range(len(fm.tensors)):
        if fm.raw(t) and fm.type_name(t) == "float32" and len(fm.shape(t)) >= 2:
            name = fm.tensor_name(t)
            layer = next((n for n in ("conv1", "conv2", "fc1", "fc2") if f"/{n}_" in name), None)
            if layer is not None:
                out[layer] = np.asarray(fm.const(t))
    return out


def test_end_to_end_layer_k_in_the_exported_tflite_equals_the_override(tmp_path, capsys):
    spec = {"conv1": {"n_clusters": 4}, "conv2": {"n_clusters": 2, "granularity": "per_channel"},
            "fc2": None}
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "--epochs", "2", "--finetune_epochs", "1", "--n_clusters", "8",
                        "--noplots", "--overrides", json.dumps(spec), out_dir=out_dir)
    assert rc == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["method"] == "finetune" and report["overrides"] == spec
    rows = {r["name"]: r for r in report["size"]["rows"]}
    assert {n: rows[n]["K"] for n in rows} == {"conv1/kernel": 4, "conv2/kernel": 2,
                                               "fc1/kernel": 8}
    assert rows["conv2/kernel"]["granularity"] == "per_channel"
    assert ["fc2", "excluded by overrides"] in report["skipped"]
    table = {line.split()[0]: line.split()[4] for line in out.splitlines()
             if line.split()[:1] and line.split()[0].endswith("/kernel")}
    assert table == {"conv1/kernel": "4", "conv2/kernel": "2", "fc1/kernel": "8"}
    assert "skipped fc2: excluded by overrides" in out
    # the float file stores the clustered values: count them per tensor (per output channel)
    weights = _flat(out_dir / "clustered.float.tflite")
    assert np.unique(weights["conv1"]).size == 4
    per_channel = [np.unique(w).size for w in weights["conv2"]]  # TFLite: (out, h, w, in)
    assert len(per_channel) == 32 and max(per_channel) == 2
    assert np.unique(weights["conv2"]).size > 2
    assert np.unique(weights["fc1"]).size == 8
    assert np.unique(weights["fc2"]).size == weights["fc2"].size  # float: all distinct
    # the palettized file: conv1, conv2, fc1 are palettes with those K; fc2 a float tensor
    pal = report["tflite"]["palettized_per_invoke"]["tensors"]
    assert {t["palette"]: t["K"] for t in pal} == {"conv1/kernel": 4, "conv2/kernel": 2,
                                                   "fc1/kernel": 8}
    kept = _flat(out_dir / "clustered.palettized_per_invoke.tflite")
    assert set(kept) == {"fc2"} and np.unique(kept["fc2"]).size == kept["fc2"].size


def test_wr_from_a_json_file_with_sparsity_and_class_keys(tmp_path, capsys):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"Conv2D": {"n_clusters": 4}, "conv2": {"n_clusters": 3},
                                "fc1": {"sparsity": 0.5}, "fc2": None}))
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "--method", "wr", "--epochs", "2", "--notflite", "--noplots",
                        "--overrides", str(path), out_dir=out_dir)
    assert rc == 0, err
    assert "1 per-layer override" not in out and "4 per-layer override(s)" in out
    result = json.loads((out_dir / "report.json").read_text())
    assert {r["name"]: r["K"] for r in result["size"]["rows"]} == {
        "conv1/kernel": 4, "conv2/kernel": 3, "fc1/kernel": 16}  # name wins over class
    import keras

    model = keras.models.load_model(out_dir / "clustered.keras", compile=False)
    fc1 = model.get_layer("fc1").kernel.numpy()
    assert np.unique(fc1).size <= 16 and np.mean(fc1 == 0) >= 0.5  # half the units at zero
    assert np.unique(model.get_layer("conv2").kernel.numpy()).size == 3
    assert np.unique(model.get_layer("fc2").kernel.numpy()).size == 640  # float


def test_finetune_class_key_null_reports_the_layers_as_excluded(tmp_path, capsys):
    # old: with a class key ({"Dense": null}) the fine-tuning methods said "not clustered"
    rc, _, err = _run(capsys, "--epochs", "1", "--finetune_epochs", "1", "--notflite", "--noplots",
                      "--overrides", '{"Dense": null}', out_dir=tmp_path / "out")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == [["fc1", "excluded by overrides"],
                                 ["fc2", "excluded by overrides"]]
    assert [r["name"] for r in report["size"]["rows"]] == ["conv1/kernel", "conv2/kernel"]


def test_dkm_retraining_takes_the_per_layer_k(tmp_path, capsys, monkeypatch):
    """old: the re-training regularized every layer towards --n_clusters (16) whatever the
    overrides, a null layer included (measured on the digits CNN, 10 epochs, lambda 1, 3
    re-training epochs, {"conv1": K=2, "fc2": null}: conv1's relative k-means error at K=2
    after re-training 0.2590 vs 0.2351 now; fc2, left float, moved 2.27 % vs 0.86 %)."""
    from dkm_tf.training import retrain

    seen, real = [], retrain.dkm_retrain

    def spy(model, data, **kwargs):
        seen.append((kwargs["n_clusters"], kwargs["sparsity"]))
        return real(model, data, **kwargs)

    monkeypatch.setattr(retrain, "dkm_retrain", spy)
    rc, _, err = _run(capsys, "--method", "dkm", "--epochs", "1", "--dkm_epochs", "1", "--notflite",
                      "--noplots", "--overrides",
                      '{"conv1": {"n_clusters": 2}, "fc1": {"sparsity": 0.25}, "fc2": null}',
                      out_dir=tmp_path / "out")
    assert rc == 0, err
    assert seen == [({"conv1": 2, "conv2": 16, "fc1": 16, "fc2": None},
                     {"conv1": 0.0, "conv2": 0.0, "fc1": 0.25, "fc2": 0.0})]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["name"]: r["K"] for r in report["size"]["rows"]} == {
        "conv1/kernel": 2, "conv2/kernel": 16, "fc1/kernel": 16}


def test_library_compress_refuses_a_unit_the_dkm_retraining_would_not_use():
    from dkm_tf import models

    model = models.digits_cnn()
    x, y = np.zeros((4, 8, 8, 1), "float32"), np.zeros(4, "int64")
    with pytest.raises(ValueError, match="Expected no 'unit' other than 'scalar'"):
        pipeline.compress(model, (x, y), method="dkm", overrides={"conv1": {"unit": "row"}},
                          verbose=0)
    with pytest.raises(ValueError, match="Expected no 'preserve_sparsity' other than False"):
        pipeline.compress(model, (x, y), method="dkm+finetune",
                          overrides={"Dense": {"preserve_sparsity": True}}, verbose=0)
