"""Leftovers of the export and CLI code (session 25): the float tolerance's depth walks the
tensors an outer model reads (a nested model's shallow output is not its deepest chain,
review R8)."""

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.export import convert as convert_lib  # noqa: E402
from dkm_tf.export import verify  # noqa: E402
from dkm_tf.export.unit_errors import depth_tolerance, output_depths, weighted_depth  # noqa: E402
from tests._depth26 import dense_chain  # noqa: E402

pytestmark = tf_backend_only()


def _shallow_and_deep(deep=20):
    """A nested Functional model with a 1-deep and a ``deep``-deep output."""
    i = keras.Input((6,))
    a = dense_chain(i, 1)
    return keras.Model(i, [a, dense_chain(a, deep - 1)], name="inner")


def _reads_shallow():
    """The outer model reads only the nested model's 1-deep output: 2 deep."""
    keras.utils.set_random_seed(0)
    inner = _shallow_and_deep()
    j = keras.Input((6,))
    shallow, _ = inner(j)
    return keras.Model(j, keras.layers.Dense(3, name="head")(shallow))


def test_nested_depth_is_that_of_the_output_read():
    # the parent counted the nested model's whole chain: 21 for the shallow read
    assert output_depths(_shallow_and_deep()) == [1, 20]
    assert weighted_depth(_reads_shallow()) == 2
    notes = []
    assert depth_tolerance(_reads_shallow(), 1e-5, 1e-4, notes) == 1e-5 and notes == []
    inner = _shallow_and_deep()
    j = keras.Input((6,))
    shallow, deep = inner(j)
    both = keras.Model(j, [keras.layers.Dense(3)(shallow), deep])
    assert weighted_depth(both) == 20  # the deep output itself, nothing added after it
    twice = keras.Model(j, inner(deep)[0])  # 20, then the shallow output of a second call
    assert weighted_depth(twice) == 21
    i = keras.Input((6,))
    inner2 = keras.Model(i, [dense_chain(i, 1), dense_chain(i, 12)])
    x = keras.Input((6,))
    mid = keras.Model(x, list(inner2(x)))  # nested in a nested model
    z = keras.Input((6,))
    assert weighted_depth(keras.Model(z, keras.layers.Dense(2)(mid(z)[0]))) == 2
    passthrough = keras.Model(i, [i, dense_chain(i, 4)])  # an input returned as an output: 0 deep
    assert weighted_depth(keras.Model(x, keras.layers.Dense(2)(passthrough(x)[0]))) == 1


def test_nested_dict_outputs_keep_their_depths():
    i = keras.Input((6,))
    inner = keras.Model(i, {"z_deep": dense_chain(i, 9), "a_shallow": dense_chain(i, 1)})
    j = keras.Input((6,))
    out = inner(j)
    assert weighted_depth(keras.Model(j, keras.layers.Dense(3)(out["a_shallow"]))) == 2
    assert weighted_depth(keras.Model(j, keras.layers.Dense(3)(out["z_deep"]))) == 10


def test_depth_is_never_below_the_deepest_path():
    # a two-input nested model: 5 deep from a, 1 from b, b fed a 7-deep chain: the path is 8
    # deep (the walk added the nested output's deepest chain, 5, to its deepest input, 7: 12)
    a, b = keras.Input((6,)), keras.Input((6,))
    two = keras.Model([a, b], keras.layers.Add()([dense_chain(a, 5), dense_chain(b, 1)]))
    x = keras.Input((6,))
    assert weighted_depth(keras.Model(x, two([x, dense_chain(x, 7)]))) == 8

    class Sub(keras.Model):  # subclassed: its every layer with weights (graph not known)
        def __init__(self):
            super().__init__()
            self.d = [keras.layers.Dense(6) for _ in range(4)]

        def call(self, h):
            for d in self.d:
                h = d(h)
            return h

    seq = keras.Sequential([keras.layers.Dense(6) for _ in range(3)])
    assert weighted_depth(keras.Model(x, Sub()(seq(keras.layers.Dense(6)(x))))) == 8


@pytest.mark.parametrize("name, want", [("ResNet50", 99), ("MobileNetV2", 105)])
def test_applications_keep_their_depth(name, want):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3))
    assert weighted_depth(model) == want


def test_export_of_a_shallow_read_refuses_what_the_whole_chain_let_through(tmp_path):
    """A float file 2.5e-5 (of the output's range) off: the parent verified it at 4.2e-5 (21
    deep) and wrote it; 2 deep: 1e-5, refused."""
    model = _reads_shallow()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    ref = np.asarray(model.predict(x, verbose=0), np.float64)
    wrong = keras.models.clone_model(model)
    wrong.set_weights(model.get_weights())
    head = wrong.get_layer("head")
    shift = 2.5e-5 * float(np.max(np.abs(ref)))
    head.bias.assign(head.bias.numpy() + shift)
    content = convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none")
    got = verify.run_tflite(content, [x], "litert")[0]  # the file is off by the shift
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) == pytest.approx(2.5e-5, rel=0.05)
    path = tmp_path / "m.tflite"
    with pytest.raises(verify.ExportVerificationError, match="tolerance 1e-05"):
        dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x, float_content=content)
    assert not path.exists()
    right = dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x)  # its own file
    assert path.exists() and all(c.tolerance == 1e-5 for c in right.comparisons)


def test_one_calibration_default_for_the_cli_compress_and_their_refusals(monkeypatch):
    """The default 256 was a literal in four places (the flag, run_compress / the CLI check,
    compress() and the two refusals of another value without weighting / refine): one changed
    alone would refuse the other's default run."""
    import inspect

    from absl import flags

    from dkm_tf import cli, cli_args, pipeline, pipeline_args
    from dkm_tf.core import validate

    n = validate.CALIBRATION_SAMPLES
    defaults = {"--calibration_samples": flags.FLAGS["calibration_samples"].default}
    for f in (cli.run_compress, cli_args.check_compress_args, pipeline.compress):
        defaults[f.__name__] = inspect.signature(f).parameters["calibration_samples"].default
    assert set(defaults.values()) == {n} == {256}, defaults
    help_line = " ".join(flags.FLAGS["calibration_samples"].help.split())
    assert f"Another value than {n} without --weighting / --refine is refused" in help_line
    for value, other in ((n, 100), (100, n)):  # the refusals read the one value at each call
        monkeypatch.setattr(validate, "CALIBRATION_SAMPLES", value)
        a = {"weighting": None, "refine": None, "calibration_samples": value}
        cli_args.check_compress_args(None, calibration_samples=value, tflite=False)
        pipeline_args.check_calibration(None, "wr", None, a)  # accepted: returns
        with pytest.raises(cli_args.CliUsageError, match=rf"--calibration_samples: expected "
                           rf"{value} \(the default\) unless --weighting or --refine"):
            cli_args.check_compress_args(None, calibration_samples=other, tflite=False)
        with pytest.raises(ValueError, match=rf"`calibration_samples`. Expected {value} \(the "
                           rf"default\) unless weighting or refine.*calibration_samples={other}"):
            pipeline_args.check_calibration(None, "wr", None, {**a, "calibration_samples": other})
        cli_args.check_compress_args(None, method="wr", refine="gptq", tflite=False,
                                     calibration_samples=other)  # calibrated: any count


def test_cli_args_re_exports_only_names_that_are_imported():
    """cli_args re-exported cli_commands.SUMMARY, which nothing imported from it."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    tree = ast.parse((root / "dkm_tf" / "cli_args.py").read_text())
    re_exported = {a.name for node in tree.body if isinstance(node, ast.ImportFrom)
                   and node.module == "dkm_tf.cli_commands" for a in node.names}
    used = set()
    for path in [*root.glob("dkm_tf/**/*.py"), *root.glob("tests/*.py"), *root.glob("bench/*.py"),
                 *root.glob("export/*.py")]:
        text = path.read_text()
        if path.name == "cli_args.py" or "cli_args" not in text:  # no use without the name
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module == "dkm_tf.cli_args":
                used.update(a.name for a in node.names)
            elif isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "cli_args":
                used.add(node.attr)
    assert {"COMMANDS", "help_text"} <= re_exported
    assert re_exported - used == set()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved Dense(8 -> 16 relu -> 3) regressor and 8 samples (x.npy), 40 others (rep.npy)."""
    d = tmp_path_factory.mktemp("exportfix25")
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(3)])
    m.save(d / "m.keras")
    r = np.random.default_rng(0)
    np.save(d / "x.npy", r.normal(size=(8, 8)).astype("f4"))
    np.save(d / "rep.npy", r.normal(size=(40, 8)).astype("f4"))
    return d


def test_one_file_for_samples_and_representative_data_is_refused(saved, tmp_path):
    """The parent calibrated on --samples and reported them as held-out verification."""
    from dkm_tf.export import cli

    out = tmp_path / "r.tflite"
    with pytest.raises(ValueError, match=r"`representative_path`. Expected a file other than "
                       r"--samples.*not held out.*\(the same file\)"):
        cli.run_to_tflite(saved / "m.keras", out, format="int8", int8_mode="full",
                          samples_path=saved / "x.npy", representative_path=saved / "x.npy")
    assert not out.exists()
    [line] = cli.path_flag_errors(samples=str(saved / "x.npy"),
                                  representative_data=f"{saved}/./x.npy")
    assert line.startswith("Invalid value for flag `--representative_data`. Expected a file "
                           "other than --samples") and "leave --representative_data out" in line
    assert cli.path_flag_errors(samples=str(saved / "x.npy"),
                                representative_data=str(saved / "rep.npy")) == []
    rep = cli.run_to_tflite(saved / "m.keras", out, format="int8", int8_mode="full",
                            samples_path=saved / "x.npy", representative_path=saved / "rep.npy")
    assert {c.measured_on for c in rep.comparisons} == {"samples"}  # held out: other samples


def test_same_arrays_as_representative_data_are_calibration_samples(saved, tmp_path):
    """In Python, sample_inputs all inside representative_data were reported as verified on
    (held-out) "samples"; now "calibration samples", noted (some inside: noted only)."""
    m = keras.models.load_model(saved / "m.keras", compile=False)
    x, other = np.load(saved / "x.npy"), np.load(saved / "rep.npy")
    rep = dkm_tf.export.to_tflite(m, tmp_path / "a.tflite", "int8", sample_inputs=x,
                                  int8_mode="full", representative_data=np.concatenate([other, x]))
    assert {c.measured_on for c in rep.comparisons} == {"calibration samples"}
    assert rep.held_out is None and "over 8 calibration samples" in rep.summary()
    assert any("the 8 sample_inputs are all in representative_data" in n for n in rep.notes)
    rep = dkm_tf.export.to_tflite(m, tmp_path / "b.tflite", "int8", sample_inputs=x,
                                  int8_mode="full", representative_data=np.concatenate(
                                      [other, x[:3].astype("float64")]))  # cast like the file
    assert {c.measured_on for c in rep.comparisons} == {"samples"}
    assert any("3 of the 8 sample_inputs are also in representative_data" in n
               for n in rep.notes)


@pytest.mark.parametrize("flag", ["samples", "representative_data", "output", "palettes",
                                  "model"])
def test_an_empty_path_flag_is_a_usage_error(flag):
    """``--samples=`` (a shell variable left unset) was taken as the flag left out."""
    from dkm_tf.export import cli

    [line] = cli.path_flag_errors(**{flag: ""})
    assert line.startswith(f"Invalid value for flag `--{flag}`. Expected a path (") and \
        line.endswith(f"). Received: an empty value (--{flag}=)")
    assert ("(the flag is required)" if flag == "model" else "(leave the flag out for ") in line
    assert cli.path_flag_errors(**{flag: None}) == []


@pytest.mark.parametrize("value", [0.0, -1e-3, float("nan"), float("inf"), True, "1e-3"])
def test_tolerance_flag_must_be_a_positive_finite_number(value):
    from dkm_tf.export import cli

    line = cli.tolerance_flag_error(value)
    assert line.startswith("Invalid value for flag `--tolerance`. Expected a positive finite "
                           "number") and line.endswith(f"Received: --tolerance={value}")
    assert cli.tolerance_flag_error(None) is None and cli.tolerance_flag_error(2e-4) is None


def test_tolerance_reaches_the_exporter_and_refusals_name_the_flag(saved, tmp_path):
    from dkm_tf.export import cli
    from dkm_tf.export.held_out import held_out_refusal

    rep = cli.run_to_tflite(saved / "m.keras", tmp_path / "f.tflite", format="float",
                            samples_path=saved / "x.npy", tolerance=3e-5)
    assert {c.tolerance for c in rep.comparisons} == {3e-5}
    comp = verify.Comparison("litert", 0.9, 0.9, 0.5, 4, unit_excess=0.5, worst_unit="")
    held = cli.script_error_text(verify.ExportVerificationError(
        held_out_refusal("f.tflite", comp, 0.05)))
    assert "a larger tolerance (--tolerance=...)" in held and "to_tflite(" not in held
    model = _reads_shallow()  # a float file 2.5e-5 off: refused at 1e-5, written at 5e-5
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    wrong = keras.models.clone_model(model)
    wrong.set_weights(model.get_weights())
    head = wrong.get_layer("head")
    head.bias.assign(head.bias.numpy() + 2.5e-5 * float(np.max(np.abs(model.predict(
        x, verbose=0)))))
    content = convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none")
    with pytest.raises(verify.ExportVerificationError) as info:
        dkm_tf.export.to_tflite(model, tmp_path / "w.tflite", "float", sample_inputs=x,
                                float_content=content)
    assert str(info.value).endswith("(tolerance 1e-05) (float32 rounding of a deep or wide "
                                    "chain can reach this; so can a wrong file: compare the "
                                    "outputs on your data first; if they are right for your "
                                    "use, a larger tolerance writes it: "
                                    "to_tflite(tolerance=...))")
    text = cli.script_error_text(info.value)
    assert text.startswith("Refusing to write") and "to_tflite(" not in text
    assert text.endswith("a larger tolerance writes it: --tolerance=...)")
    comp = verify.Comparison("litert", 0.1, 0.1, 0.5, 8, top1_agreement=0.5, min_top1=0.7)
    with pytest.raises(verify.ExportVerificationError) as info:  # top-1 only: no hint
        verify.refuse_if_bad("f.tflite", "int8", [comp])
    assert "tolerance writes it" not in str(info.value)
    dkm_tf.export.to_tflite(model, tmp_path / "w.tflite", "float", sample_inputs=x,
                            float_content=content, tolerance=5e-5)
    assert (tmp_path / "w.tflite").exists()


def test_script_refuses_empty_same_file_and_bad_tolerance_flags(saved, tmp_path):
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parent.parent / "export" / "to_tflite.py"
    base = [sys.executable, str(script), f"--model={saved / 'm.keras'}", "--format=int8",
            "--int8_mode=full", f"--output={tmp_path / 'o.tflite'}"]
    for extra, flag in ((["--representative_data=", f"--samples={saved / 'x.npy'}"],
                         "--representative_data"),
                        ([f"--samples={saved / 'x.npy'}",
                          f"--representative_data={saved / 'x.npy'}"], "--representative_data"),
                        (["--tolerance=-1"], "--tolerance")):
        res = subprocess.run(base + extra, capture_output=True, text=True, timeout=300,
                             check=False)
        assert res.returncode == 2, (extra, res.stderr[-2000:])
        [line] = res.stderr.strip().splitlines()
        assert line.startswith(f"to_tflite.py: error: Invalid value for flag `{flag}`"), line
        assert not (tmp_path / "o.tflite").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compress_cli_names_the_script_flag_not_the_python_argument(tmp_path, monkeypatch):
    """dkm-tf compress has no --tolerance: a refusal advising to_tflite(tolerance=...) names
    export/to_tflite.py --tolerance (the script re-exports clustered.keras + palettes.json)."""
    from testing import small_cnn

    from dkm_tf import cli

    def refuse(model, path, **kwargs):
        raise verify.ExportVerificationError(f"Refusing to write {path!r}: relative 3e-5 "
                                             "(tolerance 1e-05) (a larger tolerance writes "
                                             "it: to_tflite(tolerance=...))")

    monkeypatch.setattr(dkm_tf.export, "to_tflite", refuse)
    small_cnn().save(tmp_path / "user.keras")
    with pytest.raises(verify.ExportVerificationError) as info:
        cli.run_compress(str(tmp_path / "user.keras"), n_clusters=4, plots=False, quiet=True,
                         output_dir=str(tmp_path / "out"))
    text = str(info.value)
    assert "export/to_tflite.py --tolerance=..." in text and "to_tflite(tolerance" not in text
