"""Every Analysis states only what its notebook printed: the claims check, and that it catches real defects."""
import re
from pathlib import Path

import nbformat
import pytest

from eva_utils import claims as facts, ledger

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ENTRIES = ledger.read_ledger(ROOT / "results" / "ledger.jsonl")


def _printed(nb) -> str:
    return "\n".join(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _notebook_named(number: str) -> str:
    return next((p.stem for p in NOTEBOOKS if p.name.startswith(number + "_")), "")


def problems(path: Path) -> list[str]:
    """What the claims check finds in the Analysis cells of one notebook (numbers of notebooks it names count)."""
    nb = nbformat.read(path, as_version=4)
    runs = facts.runs_of(path.stem, ENTRIES)
    found = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and re.match(r"#+ Analysis", cell.source):
            named = {_notebook_named(n) for n in re.findall(r"[Nn]otebook (\d\d)", cell.source)} - {path.stem}
            others = "\n".join(facts.describe(label, m) for name in named
                               for label, m in facts.runs_of(name, ENTRIES).items())
            found += facts.check_claims(cell.source, runs, _printed(nb) + "\n" + others)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_analysis_is_true_of_its_printed_numbers(path):
    found = problems(path)
    assert not found, f"{path.name}:\n" + "\n".join(found)


def _metrics(notebook: str, label: str = "") -> dict:
    return {label: facts.runs_of(notebook, ENTRIES)[label]}


@pytest.mark.parametrize("notebook, sentence", [  # defects found in earlier Analyses, on their recorded runs
    ("03_lighter_model", "Train and test accuracy stay within 0.2 points of each other to the end."),
    ("03_lighter_model", "Both are still rising."),
    ("04_batch_norm", "Train accuracy keeps climbing, while the test loss stops improving after epoch 7."),
    ("07_capacity", "Test accuracy is above 99 % from epoch 6 on."),
    ("09_augmentation", "From epoch 4 on, test accuracy stays between 99.22 % and 99.35 %."),
])
def test_the_check_catches_claims_the_numbers_contradict(notebook, sentence):
    assert facts.check_claims(sentence, _metrics(notebook), printed="")


def test_the_check_accepts_true_claims_and_printed_numbers():
    runs = _metrics("07_capacity")
    true = ("Test accuracy is above 99 % from epoch 8 on. The best test accuracy is 99.37 % at epoch 13. "
            "The gap is 0.48 points. Dropout is `0.05` in the code.")
    assert facts.check_claims(true, runs, printed="gap -0.48 points") == []
    assert facts.check_claims("A gap of 0.61 points.", runs, printed="gap -0.48")  # a number printed nowhere


def test_held_from_and_the_printed_facts():
    assert facts.held_from([98.0, 99.1, 98.9, 99.2, 99.3], 99.0) == 4
    assert facts.held_from([99.1, 98.9], 99.0) is None and facts.held_from([99.1, 99.2], 99.0) == 1
    text = facts.describe("", facts.runs_of("07_capacity", ENTRIES)[""])
    assert "test accuracy: best 99.37 at epoch 13" in text
    assert "test accuracy >= 99.00 %: first at epoch 6, held from epoch 8 on" in text
    assert re.search(r"^\s+7\s+[\d.]+\s+98\.92\s+[-+]\d", text, re.M)  # epoch 7's dip below 99 is in the table
