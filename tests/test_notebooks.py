"""Structure of the course notebooks: sections, parameters cell, exact model sizes, honest outputs."""
import json
import re
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eva_utils import ledger

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: Exact trainable parameters of the model each notebook defines (seed: 6.3M, 194k, 10.7k, 10.9k, 10.9k, 6k,
#: 11.9k, 13.8k, 13.8k, 13.8k; the drill stays within ±5 % of the seed, Code1 is exact).
PARAMS = {
    "01_setup_heavy_net": 6_379_786,
    "02_skeleton": 194_884,
    "03_lighter_model": 10_790,
    "04_batch_norm": 10_970,
    "05_regularisation": 10_970,
    "06_global_average_pooling": 6_050,
    "07_capacity": 11_730,
    "08_voila": 13_828,
    "09_augmentation": 13_828,
    "10_lr_schedule": 13_828,
    "11_assignment": 7_756,  # the assignment: < 8,000
    "12_cifar100_ablation": 27_835_942,  # the seed's BaseNet (the seed gives no count)
}
SEED_PARAMS = {"01": 6_379_786, "02": 194_000, "03": 10_700, "04": 10_900, "05": 10_900, "06": 6_000,
               "07": 11_900, "08": 13_800, "09": 13_800, "10": 13_800}


def _read(path):
    return nbformat.read(path, as_version=4)


def _model(nb):
    """Instantiate the ``Net`` defined in the notebook (the cell that defines it, up to ``model = Net()``),
    after the parameters cell, whose values the model may use (e.g. ``DROPOUT``)."""
    params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "class Net" in c.source)
    namespace = {"nn": nn, "F": F, "torch": torch}
    exec(params, namespace)
    exec(cell.split("model = Net()")[0], namespace)
    return namespace["Net"]()


def test_every_notebook_has_an_expected_parameter_count():
    assert {p.stem for p in NOTEBOOKS} <= set(PARAMS) | {p.stem for p in NOTEBOOKS if "class Net" not in p.read_text()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_structure(path):
    nb = _read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for section in ("## Target", "## Result", "## Analysis"):
        assert section in markdown, f"{path.name}: no '{section}' section"
    assert markdown.index("## Target") < markdown.index("## Result") < markdown.index("## Analysis")
    assert "colab.research.google.com/github/" in markdown  # which repository and tag: tests/test_fresh_machine.py
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "SEED" in tagged[0].source and "MODE = None" in tagged[0].source
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []) and "MODE" in c.source]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code), f"{path.name} committed without outputs"
    assert "run.report(" in "".join(c.source for c in code), "the Result must be printed by the run"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in PARAMS], ids=lambda p: p.stem)
def test_model_parameter_count(path):
    count = sum(p.numel() for p in _model(_read(path)).parameters() if p.requires_grad)
    assert count == PARAMS[path.stem]
    if path.stem[:2] in SEED_PARAMS:
        seed = SEED_PARAMS[path.stem[:2]]
        assert abs(count - seed) <= 0.05 * seed, f"{count:,} is not within 5 % of the seed's {seed:,}"
    if path.stem == "11_assignment":
        assert count < 8_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_honest(path):
    """A notebook committed with smoke outputs must say 'Full run pending'; a full one must match the ledger."""
    nb = _read(path)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    if "SMOKE RUN" in outputs:
        assert "Full run pending" in markdown, f"{path.name}: smoke outputs without a 'Full run pending' note"
        return
    assert "mode full" in outputs, f"{path.name}: no Result block from a full run"
    lines = [json.loads(line) for line in (ROOT / "results" / "ledger.jsonl").read_text().splitlines() if line]
    entries = [e for e in ledger.latest_full(lines) if e["notebook"] == path.stem]  # the notebook's latest run
    assert entries, f"{path.name}: full outputs but no ledger entry"
    for e in entries:  # each run shows its Result block, or (a quiet run, e.g. one of ten seeds) its last-3 minimum
        m, split = e["metrics"], "val" if e.get("evaluated_on") == "validation" else "test"
        last3 = next((v for k, v in m.items() if k.startswith("last") and k.endswith("_min_test_acc")), None)
        assert re.search(rf"best {split} acc +{m['best_test_acc']:.2f} %", outputs) or (
            last3 is not None and f" {last3:.2f} " in outputs), f"{path.name}: {e['label']!r} not in the outputs"


PLUMBING = re.compile(r"smoke|run\.epochs|run\.device|run\.checkpoint", re.IGNORECASE)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if int(p.name[:2]) <= 13], ids=lambda p: p.stem)
def test_lesson_cells_carry_no_run_plumbing(path):
    """Smoke mode, the device and checkpoints live in the package: a training cell reads like the lesson."""
    nb = _read(path)
    found = [line.strip() for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
             if PLUMBING.search(line)]
    assert not found, f"{path.name}: {found}"
