"""fit(): notebook 01's loop plus bookkeeping; learns, schedules, survives a kill (resume == uninterrupted), stops on
divergence, and shortens itself in a smoke run."""
import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import eva_utils as eva
from eva_utils import results

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_train_script.py")


@pytest.fixture(autouse=True)
def _full_mode_outside_any_run(monkeypatch, tmp_path):
    """These tests train several epochs: full mode (the suite runs in smoke mode), no run begun, results in tmp."""
    monkeypatch.setenv("EVA_MODE", "full")
    monkeypatch.setenv("EVA_NEEDS_GPU", "0")
    monkeypatch.setenv("EVA_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(results, "_current", None)


def _script(tmp_path, how):
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "ckpt.pt"), str(tmp_path / f"{how}.pt"), how],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "EVA_MODE": "full"})


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    plain = _script(tmp_path, "plain")
    assert plain.returncode == 0, plain.stderr
    killed = _script(tmp_path, "kill-after-2")
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "ckpt.pt").exists()
    assert "epoch  3/4" not in killed.stdout  # it really died after epoch 2
    resumed = _script(tmp_path, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stdout and "after epoch 2/4" in resumed.stdout
    a, b = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "resume.pt")
    assert a["history"]["test_acc"] == b["history"]["test_acc"]
    assert a["history"]["train_loss"] == b["history"]["train_loss"]  # same batches, same augmentations
    assert a["history"]["lr"] == b["history"]["lr"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def _toy(n=256, lr=0.1):
    torch.manual_seed(0)
    x = torch.randn(n, 2)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    return model, loader, torch.optim.SGD(model.parameters(), lr=lr)


def test_fit_learns_records_history_and_steps_the_scheduler_per_epoch():
    model, loader, opt = _toy()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    h = eva.fit(model, loader, loader, opt, 4, scheduler=sched, device="cpu", verbose=False)
    assert h.epochs == 4 and len(h.train_acc) == len(h.test_loss) == len(h.epoch_time) == 4
    assert h.lr == pytest.approx([0.1, 0.1, 0.01, 0.01])
    assert h.test_acc[-1] > 80 and h.train_loss[-1] < h.train_loss[0]
    assert h.best_epoch == int(np.argmax(h.test_acc)) + 1 and h.device.startswith("cpu")


def test_per_batch_scheduler_steps_every_batch():
    model, loader, opt = _toy()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, epochs=2, steps_per_epoch=len(loader))
    eva.fit(model, loader, loader, opt, 2, scheduler=sched, scheduler_step="batch", device="cpu", verbose=False)
    assert sched.last_epoch == 2 * len(loader)


def test_epoch_lines_name_what_was_evaluated(capsys):
    model, loader, opt = _toy()
    eva.fit(model, loader, loader, opt, 1, device="cpu", eval_name="val")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("epoch  1/1") and " val loss " in line and "test" not in line


def test_divergence_stops_with_a_clear_message():
    model, loader, opt = _toy(lr=1e6)
    with pytest.raises(eva.TrainingDiverged, match="Lower the learning rate"):
        eva.fit(model, loader, loader, opt, 3, device="cpu", verbose=False)


def test_nan_input_stops_the_run():
    model, loader, opt = _toy()
    bad = DataLoader(TensorDataset(torch.full((64, 2), float("nan")), torch.zeros(64, dtype=torch.long)), batch_size=32)
    with pytest.raises(eva.TrainingDiverged, match="nan"):
        eva.fit(model, bad, loader, opt, 1, device="cpu", verbose=False)


def test_resume_without_checkpoint_path_is_refused():
    model, loader, opt = _toy()
    with pytest.raises(ValueError, match="checkpoint"):
        eva.fit(model, loader, loader, opt, 1, device="cpu", resume=True)  # "auto", but no run begun
    with pytest.raises(ValueError, match="checkpoint"):
        eva.fit(model, loader, loader, opt, 1, device="cpu", checkpoint=None, resume=True)


class _Stop(Exception):
    pass


def _stop_after(n):
    def on_epoch_end(epoch, history):
        if epoch == n:
            raise _Stop  # as abrupt as a disconnection, after the epoch's checkpoint
    return on_epoch_end


def _seeded_toy():
    eva.seed_everything(7)
    return _toy()


def test_auto_checkpoints_go_under_the_run_and_resume_like_an_uninterrupted_run(tmp_path):
    eva.start("99_ckpt", mode="full", device="cpu")
    model, loader, opt = _seeded_toy()
    with pytest.raises(_Stop):
        eva.fit(model, loader, loader, opt, 4, device="cpu", verbose=False, on_epoch_end=_stop_after(2))
    ckpt = tmp_path / "results" / "checkpoints" / "full" / "99_ckpt-01-seed7.pt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=False)["epoch"] == 2

    eva.start("99_ckpt", mode="full", device="cpu")  # the notebook run again from the top, after a disconnection
    model, loader, opt = _seeded_toy()
    resumed = eva.fit(model, loader, loader, opt, 4, device="cpu", verbose=False, resume=True)
    other, other_loader, other_opt = _seeded_toy()
    eva.fit(other, other_loader, other_loader, other_opt, 1, device="cpu", verbose=False)  # the run's 2nd training
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["99_ckpt-01-seed7.pt", "99_ckpt-02-seed7.pt"]

    plain_model, loader, opt = _seeded_toy()
    plain = eva.fit(plain_model, loader, loader, opt, 4, device="cpu", verbose=False, checkpoint=None)
    assert resumed.epochs == 4 and resumed.test_acc == plain.test_acc and resumed.lr == plain.lr
    assert resumed.train_loss == plain.train_loss and resumed.test_loss == plain.test_loss
    for key, value in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_smoke_run_trains_one_epoch_and_neither_writes_nor_resumes_automatic_checkpoints(tmp_path, monkeypatch):
    eva.start("99_smoke", mode="smoke")
    model, loader, opt = _seeded_toy()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    h = eva.fit(model, loader, loader, opt, 15, scheduler=sched, verbose=False, resume=True)
    assert h.epochs == 1 and sched.last_epoch == 1 and h.device.startswith("cpu") and h.seed == 7
    assert not (tmp_path / "results" / "checkpoints").exists()
    explicit = tmp_path / "explicit.pt"  # a path given on purpose is still written in a smoke run
    eva.fit(model, loader, loader, opt, 15, checkpoint=explicit, verbose=False)
    assert torch.load(explicit, weights_only=False)["epoch"] == 1


def _notebook01_loop():
    """The train/test functions that notebook 01 writes out by hand, executed from the notebook itself."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "01_setup_heavy_net.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "def train_epoch" in c.source)
    namespace = {"torch": torch, "nn": nn, "F": torch.nn.functional, "eva": eva}
    exec(cell, namespace)
    namespace["device"] = torch.device("cpu")  # the functions read the notebook's global `device`
    return namespace["train_epoch"], namespace["test_epoch"]


def test_notebook01_hand_written_loop_and_fit_give_the_same_history():
    train_epoch, test_epoch = _notebook01_loop()
    model, loader, _ = _seeded_toy()
    # In order: fit's progress bar (tqdm.auto) opens one extra iterator per epoch, which draws one shuffle seed from
    # torch's generator, so a shuffling loader would deal other batches. The committed full runs were made that
    # way, so fit keeps it; the loop's arithmetic is what this test compares.
    loader = DataLoader(loader.dataset, batch_size=32)
    model.append(nn.LogSoftmax(dim=1))  # like notebook 01's net
    twin = copy.deepcopy(model)

    eva.seed_everything(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    by_hand = {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
    for _ in range(3):
        for key, value in zip(by_hand, (*train_epoch(model, loader, opt), *test_epoch(model, loader))):
            by_hand[key].append(value)

    eva.seed_everything(3)
    h = eva.fit(twin, loader, loader, torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9), 3, device="cpu",
                verbose=False, checkpoint=None)
    assert h.train_acc == by_hand["train_acc"] and h.test_acc == by_hand["test_acc"]  # the same batches, same steps
    assert h.test_loss == by_hand["test_loss"]
    assert h.train_loss == pytest.approx(by_hand["train_loss"], rel=1e-6)  # fit sums on the device in float32
    assert 60 < h.test_acc[0] < h.test_acc[-1]  # it learned: the comparison is not between two idle runs
    for key, value in model.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value), key


def test_evaluate_counts_exactly():
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 0])  # identity model gets 3 of 4 right
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
    loss, acc = eva.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3), "cpu")
    assert acc == 75.0
