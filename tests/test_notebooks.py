"""The colab/ notebooks: each runs end to end with smoke settings, and the numbers it prints hold.

Every notebook ends by printing one line ``RESULT {json}``; the checks below bound those numbers
(accuracy above chance by a margin, files smaller than float, energy lower after clustering,
the spectral penalty exactly zero at K >= rank, ...). The install cell (marked COLAB-SETUP) is
dropped; top-level settings such as ``EPOCHS = 30`` are replaced by the values in SMOKE.
The static checks (names, badge, install cell, no committed outputs) need no kernel.
"""

import json
import pathlib
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
EXPECTED = ("01_quickstart.ipynb", "02_what_the_regularizer_does.ipynb",
            "03_kernel_clustering.ipynb", "04_deploy.ipynb", "05_energy.ipynb")
# smoke settings: the value of each top-level ``NAME = ...`` line of the notebooks (comment kept)
SMOKE = {"EPOCHS": "5", "DKM_EPOCHS": "2", "FINETUNE_EPOCHS": "1", "RUNS": "20",
         "SWEEP_KS": "(4,)"}
N_TEST = 449  # digits test images: one prediction is 1 / 449 of accuracy
ONE = 1.5 / N_TEST


def _smoke(nb):
    nb.cells = [c for c in nb.cells if "COLAB-SETUP" not in c.source]
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for name, value in SMOKE.items():
            cell.source, n = re.subn(rf"^{name} = [^#\n]*?(?=\s*(#|$))", f"{name} = {value}",
                                     cell.source, flags=re.M)
            replaced += n
    return replaced


def _result(nb):
    """The dict printed by the notebook's ``RESULT {json}`` line (exactly one)."""
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")
    found = re.findall(r"^RESULT (\{.*\})$", text, flags=re.M)
    assert len(found) == 1, f"expected one RESULT line, found {len(found)}:\n{text[-3000:]}"
    return json.loads(found[0])


def _acc(value, floor):
    assert 0.0 <= value <= 1.0 and value >= floor, value


def check_quickstart(r):
    assert r["dataset"] == "digits"
    _acc(r["acc_float"], 0.85)
    _acc(r["acc_final"], 0.7)  # K=4 after one epoch of fine-tuning (chance: 0.1)
    post = r["post_training"]  # "unit/refine": [test accuracy, output MSE on x_calib]
    assert set(post) == {"auto/None", "auto/outputs", "scalar/None", "scalar/gptq"}
    for acc, _ in post.values():
        _acc(acc, 0.0)
    # refine keeps a layer's fit only if the model's output error on x_calib falls
    assert post["auto/outputs"][1] <= post["auto/None"][1] * (1 + 1e-5), post
    assert post["scalar/gptq"][1] <= post["scalar/None"][1] * (1 + 1e-5), post
    assert r["penalty_last"] < 0.7 * r["penalty_first"]  # the regularizer does its job
    assert r["cr_model_log2"] > 10  # 2-bit indices: 16x for the big tensors, codebooks aside
    # the exported files compute what Keras computes, on all 449 test images
    assert abs(r["acc_tflite_float"] - r["acc_float"]) <= ONE
    assert abs(r["acc_tflite_palettized_once"] - r["acc_final"]) <= ONE
    assert abs(r["acc_tflite_palettized_per_invoke"] - r["acc_final"]) <= ONE
    assert r["palettized_per_invoke_bytes"] < 0.2 * r["float_bytes"]
    assert r["palettized_once_bytes"] < 0.5 * r["float_bytes"]


def check_regularizer(r):
    _acc(r["acc_float"], 0.85)
    assert r["rank"] == 3 and r["degenerate"] is True
    assert r["spectral_penalty_k_ge_rank"] < 1e-9  # exactly zero for K >= rank(W) = 3
    assert r["hard_penalty_k3"] > 0.05  # k-means at K=3 leaves real error
    drop = r["conv_sse_drop"]
    assert drop["hard"] > 3.0, drop  # the hard penalty gathers the rows around K centres
    assert drop["spectral"] < 1.5 and drop["no penalty"] < 1.5, drop  # the spectral one not
    assert r["dense_sse_drop"]["hard"] > 3.0 > r["dense_sse_drop"]["spectral"]
    acc = r["acc_kmeans"]
    assert acc["hard"] > acc["spectral"] - ONE, acc
    for k, row in r["k_sweep"].items():
        for method, value in row.items():
            assert 0.0 <= value <= 1.0, (k, method, value)
    _acc(r["k_sweep"]["4"]["dkm_finetune"], 0.7)
    assert set(r["k_sweep"]) == {"4"}  # smoke: the sweep runs K = 4 only (full: 2, 4, 8)


def check_kernels(r):
    _acc(r["acc_float"], 0.85)
    assert len(r["codebook_ids"]) == 1, r["codebook_ids"]  # one codebook for the network
    assert r["clustered_layers"] == ["conv1", "conv2"]
    assert r["left_float"] == ["fc1", "fc2"]  # dense layers stay float (Son et al.), reported
    _acc(r["acc_finetuned"], 0.7)
    _acc(r["acc_post"]["64"], 0.5)
    assert r["replaced"] == ["conv1", "conv2"]
    assert r["factorised_max_abs_diff"] < 1e-4  # the factorised convolution is exact
    assert abs(r["acc_factorised"] - r["acc_finetuned"]) <= ONE
    assert all(v > 1.2 for v in r["flops_ratio"].values()), r["flops_ratio"]
    assert 1.2 < r["flops_ratio_total"] < 9.0  # conv-then-add saves; 9x bounds a 3x3 layer
    assert r["cr_clustered_log2"] > 5
    assert r["tflite_bytes"] < r["float_bytes"]


def check_deploy(r):
    b, acc = r["bytes"], r["accuracy"]
    assert b["float"] == b["original"]
    assert b["fp16"] < 0.6 * b["float"]
    assert b["int8"] < 0.35 * b["float"] and b["int8_full"] < 0.35 * b["float"]
    assert b["palettized_per_invoke"] < b["palettized_all"] <= b["palettized"] < 0.5 * b["float"]
    if "tflm" in b:
        assert b["tflm"] < 0.25 * b["float"]
    assert abs(acc["original"] - r["acc_keras_float"]) <= ONE
    for label in ("float", "fp16", "int8", "palettized", "palettized_all",
                  "palettized_per_invoke", "tflm"):
        if label in acc:
            assert abs(acc[label] - r["acc_keras_clustered"]) <= 3 * ONE, (label, acc)
    assert abs(acc["int8_full"] - r["acc_keras_clustered"]) <= 0.03, acc
    _acc(r["acc_keras_clustered"], 0.8)
    assert all(v > 0 for v in r["latency_ratio"].values())


def check_energy(r):
    paper = r["digits_paper_before"] / r["digits_paper_after"]
    assert 1.2 < paper <= 1.75, paper  # sharing alone saves at most ~1.75x (weights term)
    assert r["digits_hierarchy_after"] < r["digits_hierarchy_before"]
    _acc(r["acc_after"], 0.7)
    assert r["alexnet_macs"] == 724_406_816  # 666 M conv + 58.6 M fc, Caffe's bvlc_alexnet
    for key in ("alexnet_paper_ratio", "alexnet_hierarchy_ratio", "alexnet_conv_paper_ratio",
                "alexnet_conv_hierarchy_ratio"):
        ratios = [v for _, v in sorted(r[key].items(), key=lambda kv: float(kv[0]))]
        assert all(0 < v < 1 for v in ratios), (key, ratios)
        assert ratios == sorted(ratios), (key, ratios)  # fewer clusters, less energy
    assert r["alexnet_r2"] > 0.9


def _n(text):
    return float(text.replace(",", ""))


# What the markdown states that does not depend on training (file sizes of a fixed
# architecture, the size formula, AlexNet's shapes): it must be what the smoke run prints too.
# (markdown pattern, its numbers from the RESULT dict)
FACTS = {
    "01_quickstart.ipynb": [
        (r"\*\*0\.10x\*\* the float file \(([\d,]+) vs ([\d,]+) B\)",
         lambda r: (r["palettized_per_invoke_bytes"], r["float_bytes"])),
        (r"`decode=\"once\"` is ([\d.]+)x", lambda r: (round(
            r["palettized_once_bytes"] / r["float_bytes"], 2),)),
        (r"Whole model ([\d.]+)x", lambda r: (round(r["cr_model_log2"], 1),))],
    "03_kernel_clustering.ipynb": [
        (r"The palettized file is ([\d,]+) B, ([\d.]+)x the float file",
         lambda r: (r["tflite_bytes"], round(r["tflite_bytes"] / r["float_bytes"], 2)))],
    "04_deploy.ipynb": [
        (rf"\| {row} \| (?:\*\*)?([\d,]+)(?:\*\*)? \| (?:\*\*)?([\d.]+)",
         lambda r, key=key: (r["bytes"][key], round(r["bytes"][key] / r["bytes"]["original"],
                                                    3)))
        for row, key in (("original \\(float, not clustered\\)", "original"),
                         ("float \\(clustered weights\\)", "float"), ("fp16", "fp16"),
                         ("int8 \\(dynamic\\)", "int8"), ("int8 \\(full\\)", "int8_full"),
                         ("palettized, decode once", "palettized"),
                         ("palettized, nothing kept float", "palettized_all"),
                         ("palettized, decode per invoke", "palettized_per_invoke"))],
    "05_energy.ipynb": [
        (r"AlexNet: ([\d,]+) MACs per image", lambda r: (r["alexnet_macs"],)),
        (r"at rate 0\.5 \(([\d.]+)\) and \d+ % at 0\.01 \(([\d.]+)\); the conv layers "
         r"alone reach ([\d.]+)", lambda r: tuple(round(v, 3) for v in (
             r["alexnet_paper_ratio"]["0.5"], r["alexnet_paper_ratio"]["0.01"],
             r["alexnet_conv_paper_ratio"]["0.01"]))),
        (r"R² = ([\d.]+)\*\* between the two models", lambda r: (round(r["alexnet_r2"], 4),))],
}


def check_markdown(name, nb, r):
    """The training-independent numbers the markdown states are the ones the run printed."""
    text = " ".join("\n".join(c.source for c in nb.cells if c.cell_type == "markdown").split())
    for pattern, numbers in FACTS.get(name, ()):
        found = re.search(pattern, text)
        assert found, f"{name}: the markdown no longer states {pattern!r}"
        stated = tuple(_n(g) for g in found.groups())
        assert stated == tuple(float(v) for v in numbers(r)), (name, pattern, stated)


CHECKS = {"01_quickstart.ipynb": check_quickstart,
          "02_what_the_regularizer_does.ipynb": check_regularizer,
          "03_kernel_clustering.ipynb": check_kernels,
          "04_deploy.ipynb": check_deploy,
          "05_energy.ipynb": check_energy}


def test_the_notebooks_are_there():
    assert tuple(p.name for p in NOTEBOOKS) == EXPECTED
    assert set(CHECKS) == set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_install_cell_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    setup = [c for c in nb.cells if "COLAB-SETUP" in c.source]
    assert len(setup) == 1 and nb.cells[1] is setup[0], "cell 2 is the one install cell"
    src = setup[0].source
    url = re.search(r'^REPO_URL = "(https://github\.com/([\w.-]+/[\w.-]+))"', src, flags=re.M)
    assert url, "the install cell defines REPO_URL"
    assert re.search(r"try:\n\s+import dkm_tf\nexcept ImportError:\n\s+%pip install .*"
                     r"git\+\{REPO_URL\}", src), src  # live, skipped when dkm_tf imports
    badge = f"https://colab.research.google.com/github/{url.group(2)}/blob/main/colab/{path.name}"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and f"({badge})" in first.source
    assert "colab-badge.svg" in first.source
    urls = {re.search(r'^REPO_URL = "(.*)"', nbformat.read(p, as_version=4).cells[1].source,
                      flags=re.M).group(1) for p in NOTEBOOKS}
    assert urls == {url.group(1)}, "every notebook installs from the same repository"
    for cell in nb.cells:  # committed without outputs; the tests execute them
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_its_numbers_hold(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert _smoke(nb) >= 2, "the notebook has no smoke-sized settings (EPOCHS = ...)"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    CHECKS[path.name](_result(nb))
    check_markdown(path.name, nb, _result(nb))
