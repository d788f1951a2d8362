"""fit(): learns, schedules, survives a kill (resume == uninterrupted), and stops on divergence."""
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

SCRIPT = Path(__file__).with_name("_train_script.py")


def _script(tmp_path, how):
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "ckpt.pt"), str(tmp_path / f"{how}.pt"), how],
                          capture_output=True, text=True, timeout=120)


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
        eva.fit(model, loader, loader, opt, 1, device="cpu", resume=True)


def test_evaluate_counts_exactly():
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 0])  # identity model gets 3 of 4 right
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
    loss, acc = eva.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3), "cpu")
    assert acc == 75.0
