"""eva.map_seeds: several seeds side by side on Ray give exactly the runs they would have given one by one."""
import json
import sys

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import eva_utils as eva


def _train(seed, run):
    """A tiny deterministic training run that reports to the ledger, as a notebook's train_step does."""
    eva.seed_everything(seed)
    x = torch.randn(256, 4)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    h = eva.fit(model, loader, loader, torch.optim.SGD(model.parameters(), lr=0.1), 2, device="cpu",
                checkpoint=None, verbose=False)
    run.report(h, eva.Target(), model, label=f"seed {seed}", quiet=True)  # the notebook's `run` travels with it
    return h.test_acc, h.train_loss, torch.get_num_threads()


@pytest.fixture
def full_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("EVA_MODE", "full")
    monkeypatch.setenv("EVA_NEEDS_GPU", "0")
    monkeypatch.delenv("EVA_LEDGER", raising=False)
    monkeypatch.setattr(eva.results, "git_state", lambda *a, **k: (None, None))
    return eva.start("99_parallel", mode="full", device="cpu")


def test_map_seeds_on_ray_equals_one_after_another(full_run, tmp_path):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # as a notebook's own functions travel
    side_by_side = eva.map_seeds(lambda seed: _train(seed, full_run), [3, 1, 2])
    assert list(side_by_side) == [3, 1, 2]
    alone = {seed: _train(seed, full_run) for seed in (3, 1, 2)}
    for seed in alone:
        assert side_by_side[seed][:2] == alone[seed][:2], seed  # same accuracies and losses, bit for bit
        assert side_by_side[seed][2] == 1  # one thread per worker
    assert side_by_side[1][0] != side_by_side[2][0]  # the seeds really differ
    lines = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert sorted(e["seed"] for e in lines) == [1, 1, 2, 2, 3, 3]  # the workers' reports reached the ledger


def test_map_seeds_runs_one_after_another_in_a_smoke_run(monkeypatch):
    monkeypatch.setenv("EVA_MODE", "smoke")
    calls = []
    out = eva.map_seeds(lambda seed: calls.append(seed) or seed * 10, [2, 1])
    assert out == {2: 20, 1: 10} and calls == [2, 1]  # in this process, in order


def test_map_seeds_in_a_notebook_prints_nothing_of_ray(tmp_path):
    """Starting Ray inside a Jupyter kernel logged an ipywidgets hint and a token-auth warning into the committed
    outputs of notebook 11. A lesson cell that runs seeds side by side should print only what it prints."""
    pytest.importorskip("ray")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nos.environ['EVA_MODE'] = 'full'\nimport eva_utils as eva\n"
        "print(eva.map_seeds(lambda seed: seed * 10, [1, 2]))")])
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = nb.cells[0].outputs
    assert [o.get("name") for o in outputs] == ["stdout"], "".join(o.get("text", "") for o in outputs)
    assert outputs[0]["text"] == "{1: 10, 2: 20}\n"
