"""Notebook 15: its recipe cells (hyper-parameters, DavidNet, the training loop) run outside the notebook and do what
the notebook says; speedrun's clock, record and tables are right."""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eva_utils as eva
from eva_utils import config, results, speedrun, train, tricks
from eva_utils.data import ArrayDataset
from eva_utils.models import from_notebook

ROOT = Path(__file__).resolve().parents[1]
TINY = {"WIDTH": 8, "BATCH_SIZE": 32, "EPOCHS": 1, "SPEED_EPOCHS": 1}


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), name=f"fake{n}")


TRAIN, TEST = _data(96, 0), _data(40, 1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def nb():
    return speedrun.load(**TINY)


@pytest.fixture(autouse=True)
def _smoke_mode(monkeypatch):
    """As the notebook's tests run it: smoke mode, so that the GPU check stays out (one test switches to full)."""
    monkeypatch.setenv("EVA_MODE", "smoke")
    monkeypatch.delenv("EVA_NEEDS_GPU", raising=False)


# --------------------------------------------------------------------------- the recipe cells
def test_the_recipe_cells_hold_pages_final_recipe(nb):
    assert nb["EPOCHS"] == 1 and nb["WIDTH"] == 8  # the overrides reach the recipe
    final, baseline = nb["FINAL"], nb["BASELINE"]
    expected = {**baseline, **nb["SPEED"]}
    for change in nb["TRICKS"].values():
        expected.update(change)
    assert final == expected and list(nb["TRICKS"])[-1] == "flip TTA"
    assert not (baseline["gpu_data"] or baseline["amp"] or baseline["tta"]) and baseline["lr"] == 0.4
    assert final["gpu_data"] and final["amp"] and final["channels_last"]
    assert (final["label_smoothing"], final["act"], final["celu_alpha"], final["ghost_batch"]) == (0.2, "celu", 0.3, 32)
    assert final["freeze_bn_scales"] and final["whiten"] and final["tta"] and final["ema_momentum"] == 0.99
    assert (final["lr"], final["bn_lr_scale"], final["bn_wd_scale"]) == (1.0, 64.0, 1 / 64)
    assert (final["pad_mode"], final["cutout"], final["batch_size"]) == ("reflect", 0, 32)
    full = speedrun.load()
    assert full["FINAL"]["epochs"] == 10 and full["FINAL"]["batch_size"] == 512 and full["RUNS"] == 5


def test_davidnet_with_switches_off_is_notebook_14s_custom_resnet():
    nb64 = speedrun.load()
    torch.manual_seed(0)
    reference = from_notebook(ROOT / "notebooks" / "14_custom_resnet.ipynb", "CustomResNet")().eval()
    with torch.no_grad():
        reference.fc.bias.zero_()  # Page's net has no classifier bias
    ours = nb64["DavidNet"](nb64["BASELINE"]).eval()
    state = {k: v for k, v in reference.state_dict().items() if k != "fc.bias"}
    ours.load_state_dict(state)  # same names, same shapes
    assert sum(p.numel() for p in ours.parameters()) == 6_573_130 - 10
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(F.log_softmax(ours(x), 1), reference(x), atol=1e-5)


def test_davidnet_switches(nb):
    filters = torch.randn(27, 3, 3, 3)
    model = nb["DavidNet"](nb["FINAL"], whitening=filters)
    assert all(m.alpha == 0.3 for m in model.modules() if isinstance(m, nn.CELU))
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    bns = tricks.batchnorms(model)
    assert len(bns) == 8 and all(isinstance(b, tricks.GhostBatchNorm) and b.ghost_batch == 32 for b in bns)
    assert torch.equal(model.prep[0].weight, filters) and not model.prep[0].weight.requires_grad
    assert model.prep[1][0].kernel_size == (1, 1)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    plain = nb["DavidNet"](nb["BASELINE"])
    assert sum(isinstance(m, nn.ReLU) for m in plain.modules()) == 8 and plain.prep[0].kernel_size == (3, 3)


# --------------------------------------------------------------------------- the training loop
@pytest.mark.parametrize("row", ["BASELINE", "FINAL"])
def test_a_row_trains_on_the_cpu_and_its_times_add_up(nb, row):
    r = nb["train"](nb[row], TRAIN, TEST, CPU, seed=0, target=0.0)
    h = r.history
    assert h.epochs == 1 and np.isfinite(h.train_loss[0]) and 0 <= h.test_acc[0] <= 100 and h.seed == 0
    assert r.time_to_target_s == pytest.approx(r.setup_s + h.epoch_time[0])  # target 0: reached after epoch 1
    assert r.total_s == pytest.approx(r.setup_s + r.train_s + r.final_test_s) and r.final_test_s > 0
    fresh = nb["DavidNet"](nb[row], whitening=torch.zeros(27, 3, 3, 3) if row == "FINAL" else None)
    frozen = tricks.freeze_bn_scales(fresh) if row == "FINAL" else 0
    assert r.params == eva.count_params(fresh) > 0 and frozen == (280 if row == "FINAL" else 0)  # EMA: none trainable
    never = nb["train"]({**nb[row], "epochs": 2}, TRAIN, TEST, CPU, seed=0, target=101.0)
    assert never.time_to_target_s is None and never.history.epochs == 2


def test_the_final_recipe_tests_a_frozen_moving_average_with_unit_bn_scales(nb):
    r = nb["train"](nb["FINAL"], TRAIN, TEST, CPU, seed=0)
    assert not r.model.training and not any(p.requires_grad for p in r.model.parameters())  # tricks.EMA's copy
    assert all(torch.all(b.weight == 1) for b in tricks.batchnorms(r.model))
    expected = nb["whitening_filters"](TRAIN, CPU)
    assert torch.allclose(r.model.prep[0].weight, expected, atol=1e-6)  # frozen: the average of constant filters


def test_learning_rate_follows_the_recipes_schedule(nb):
    hyp = {**nb["BASELINE"], "epochs": 3, "lr": 0.3, "lr_knots": (0, 1 / 3, 1), "lr_values": (0, 1, 0)}
    r = nb["train"](hyp, TRAIN, TEST, CPU, seed=0)
    assert r.history.lr == pytest.approx([0.0, 0.3, 0.15])  # each epoch's lr at its start


def test_same_seed_same_run_and_another_seed_another(nb):
    a, b, c = (nb["train"](nb["FINAL"], TRAIN, TEST, CPU, seed=s) for s in (3, 3, 4))
    assert a.history.train_loss == b.history.train_loss and a.history.test_loss == b.history.test_loss
    assert a.history.train_loss != c.history.train_loss


def test_a_full_run_on_a_cpu_stops_at_the_first_training_step(nb, monkeypatch):
    monkeypatch.setenv("EVA_MODE", "full")
    monkeypatch.setenv("EVA_NEEDS_GPU", "1")
    monkeypatch.delenv("EVA_ALLOW_CPU", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(train.NeedsGPU, match="needs a GPU"):
        nb["train"](nb["FINAL"], TRAIN, TEST, CPU, seed=0)
    assert time.perf_counter() - t0 < 10


def test_smoke_parameters_of_notebook_15_are_registered():
    assert set(config.SMOKE_PARAMETERS["15_fast_cifar10"]) >= {"WIDTH", "EPOCHS", "SPEED_EPOCHS", "BATCH_SIZE"}
    nb_full = speedrun.load()
    assert all(name in nb_full for name in config.SMOKE_PARAMETERS["15_fast_cifar10"])  # parameters it can replace


# --------------------------------------------------------------------------- speedrun's pieces
def test_clock_counts_only_its_blocks():
    clock = speedrun.Clock("cpu")
    with clock:
        time.sleep(0.05)
    time.sleep(0.1)  # between blocks: not counted
    with clock:
        time.sleep(0.02)
    assert 0.07 <= clock.total < 0.12 and 0.02 <= clock.last < 0.05


def test_time_to_target():
    assert speedrun.time_to_target(1.0, [2.0, 2.0, 2.0], [90.0, 94.1, 93.0], 94.0) == 5.0
    assert speedrun.time_to_target(1.0, [2.0, 2.0], [90.0, 93.9], 94.0) is None


def _result(accs, epoch_time=1.0, setup=0.5, test_s=0.1):
    h = eva.History(train_loss=[1.0] * len(accs), train_acc=[90.0] * len(accs), test_loss=[0.3] * len(accs),
                    test_acc=list(accs), lr=[0.1] * len(accs), epoch_time=[epoch_time] * len(accs), device="cpu")
    return speedrun.RunResult(h, setup, test_s, nn.Linear(1, 1), 94.0, params=7)


def test_rows_table_and_final_summary():
    rows = {"baseline": _result([93.0, 93.5]), "trick": _result([93.8, 94.2], epoch_time=0.5)}
    text = speedrun.table(rows)
    assert "baseline" in text and "not reached" in text and "(+0.70)" in text and "1.5 s" in text  # 0.5 + 2×0.5
    summary = speedrun.final_summary([_result([94.0]), _result([94.2])], [2, 3])
    assert "run 2 (seed 3): final test acc  94.20 %" in summary
    assert f"mean of 2: 94.10 % ± {statistics.stdev([94.0, 94.2]):.2f} (std)" in summary
    assert "2 of 2 runs reached 94 %, after 1.50 s on average" in summary
    mean = speedrun.mean_history([rows["baseline"].history, rows["trick"].history])
    assert mean.test_acc == pytest.approx([93.4, 93.85])


def test_titles_say_smoke_only_in_a_smoke_run(monkeypatch):
    assert speedrun.title("x").startswith("SMOKE RUN")
    monkeypatch.setenv("EVA_MODE", "full")
    assert speedrun.title("x") == "x"


def test_record_writes_one_quiet_ledger_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(results, "git_state", lambda *a, **k: ("a" * 40, False))
    run = eva.Run("99_speed", mode="full", device="cpu")
    entry = speedrun.record(run, "trick", _result([93.8, 94.2]), eva.Target(test_acc=94.0, hold_last=1))
    assert capsys.readouterr().out == ""
    line = json.loads((tmp_path / "ledger.jsonl").read_text())
    assert line["label"] == "trick" and line["params"] == 7 and line["passed"] and entry["passed"]
    assert line["metrics"]["time_to_94_s"] == 2.5 and line["metrics"]["total_s"] == 2.6


def test_show_prints_the_code_without_its_docstring(capsys):
    def example(x):
        """Docstring
        over two lines."""
        return x + 1  # the code

    speedrun.show(example)
    out = capsys.readouterr().out
    assert "return x + 1  # the code" in out and "Docstring" not in out and "over two lines" not in out


def test_load_fails_clearly_without_recipe_cells(tmp_path):
    import nbformat

    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("SEED = 1")]
    book.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(book, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="no cells tagged 'recipe'"):
        speedrun.load(tmp_path / "x.ipynb")


def test_time_to_94_reads_airbench_s_own_final_row():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from time_to_94 import _airbench_final_row

    printed = ("|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |\n"
               "|       1  |      9  |      0.6006  |     0.9258  |   0.9377  |               |              3.0101  |\n"
               "|          |   eval  |      0.6006  |     0.9258  |   0.9377  |       0.9407  |              3.3472  |\n")
    assert _airbench_final_row(printed) == (pytest.approx(94.07), pytest.approx(3.3472))
