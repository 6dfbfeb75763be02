"""What the colab/ notebooks' markdown concludes from its own tables, and what one notebook
says of another's code: checked without a kernel (the opt-in full runs of
tests/test_newcomer14_notebooks.py check the tables against a run).

(old: 02 said "At K = 4 and 8 the penalty alone is worth more than fine-tuning alone" under
a table whose K = 4 row reads 94.65 (penalty) against 96.21 (fine-tune); 03 said notebook 04
reaches 0.16x "with scalar units everywhere" while 04 clusters with ``unit="auto"``: rows of 3
in the convolutions)
"""

import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"


def _cells(name, kind):
    nb = nbformat.read(COLAB / name, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == kind]


def _markdown(name):
    return " ".join(" ".join(_cells(name, "markdown")).split())


def sweep_table(md):
    """{K: {"wr", "finetune", "penalty", "both"}} of notebook 02's K sweep table, and the
    float accuracy its caption names."""
    rows = re.findall(r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| \*\*([\d.]+)\*\* \|", md)
    table = {int(k): dict(zip(("wr", "finetune", "penalty", "both"), map(float, v)))
             for k, *v in rows}
    float_acc = float(re.search(r"This run \(test accuracy %, float model ([\d.]+) %\)",
                                md).group(1))
    return table, float_acc


def _ks(text):
    return [int(k) for k in re.findall(r"\d+", text)]


def check_sweep_conclusions(md):
    table, float_acc = sweep_table(md)
    assert set(table) == {2, 4, 8}, table
    more = re.search(r"At K = ([\d, and]+?) the penalty alone is worth more than fine-tuning "
                     r"alone", md)
    assert more, "the conclusion about the penalty alone is gone"
    for k in _ks(more.group(1)):
        assert table[k]["penalty"] > table[k]["finetune"], (k, table[k])
    for k, a, b in re.findall(r"at K = (\d+) less \(([\d.]+) % vs ([\d.]+) %\)", md):
        row = table[int(k)]
        assert (float(a), float(b)) == (row["penalty"], row["finetune"]), (k, row)
        assert row["penalty"] < row["finetune"], (k, row)
    for k, a, b in re.findall(r"At K = (\d+) the penalty alone is worth more than fine-tuning "
                              r"alone \(([\d.]+) % vs ([\d.]+) %\)", md):
        assert (float(a), float(b)) == (table[int(k)]["penalty"], table[int(k)]["finetune"])
    within = re.search(r"come within ([\d.]+) and ([\d.]+) points of float", md)
    assert within, "the distance to float is no longer stated"
    assert tuple(map(float, within.groups())) == tuple(
        round(float_acc - table[k]["both"], 1) for k in (4, 8))


def test_the_regularizer_notebook_concludes_what_its_sweep_table_shows():
    check_sweep_conclusions(_markdown("02_what_the_regularizer_does.ipynb"))


def test_the_sweep_check_fails_on_the_old_conclusion():
    md = _markdown("02_what_the_regularizer_does.ipynb")
    old = re.sub(r"At K = 8 the penalty alone.*?K = 4 less \([^)]*\)\.",
                 "At K = 4 and 8 the penalty alone is worth more than fine-tuning alone, and",
                 md)
    assert old != md
    with pytest.raises(AssertionError):
        check_sweep_conclusions(old)


UNIT_WORDS = {"scalar": r"scalar units everywhere",
              "auto": r"rows of 3 in the convolutions and scalar units in the dense layers"}


def test_what_notebook_03_says_of_notebook_04_is_04s_code_and_table():
    said = re.search(r"notebook 04: ([\d.]+)x with ([^)]*)\)", _markdown(
        "03_kernel_clustering.ipynb"))
    assert said, "03 no longer points to notebook 04"
    code = "\n".join(_cells("04_deploy.ipynb", "code"))
    unit = re.search(r"dkm_tf\.compress\(.*?unit=\"(\w+)\"", code, flags=re.S).group(1)
    assert re.search(UNIT_WORDS[unit], said.group(2)), (unit, said.group(2))
    per_invoke = re.search(r"\| palettized, decode per invoke \| \*\*[\d,]+\*\* \| "
                           r"\*\*([\d.]+)\*\*", _markdown("04_deploy.ipynb")).group(1)
    assert float(said.group(1)) == round(float(per_invoke), 2)
