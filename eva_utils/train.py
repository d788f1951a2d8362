"""The training loop: ``fit(model, train_loader, test_loader, optimizer, epochs) -> History``.

One epoch = one pass over the training set (forward, loss, backward, optimiser step for
each batch) followed by one pass over the test set without gradients. ``History`` keeps
per-epoch loss, accuracy (in percent) and learning rate, which is what the curves and the
Result block are made of.

Also here, because long runs get interrupted (Colab disconnects):

* a checkpoint after every epoch holds everything needed to continue: weights, optimiser
  and scheduler state, the history, and every random generator's state. By default
  (``checkpoint="auto"``) it goes under the run that ``eva.start`` began
  (``results/checkpoints/full/<notebook>-<nn>-seed<s>.pt``, the nn-th training of the
  notebook); ``resume=True`` picks the run up where it stopped and ends exactly where an
  uninterrupted run would have (on the CPU, bit for bit).
* a guard stops the run with a clear message when the loss becomes NaN/inf or explodes,
  instead of training on garbage for an hour.
* ``amp=True`` uses mixed precision (float16 with loss scaling) on a CUDA GPU.

A smoke run (``EVA_MODE=smoke``, what the tests run) trains 1 epoch whatever ``epochs`` says,
and neither writes nor resumes the automatic checkpoints: it only checks that the code runs.
"""
from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import config
from .modelstate import model_device, modes_restored
from .results import current_run


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the message says where and what to try."""


class NeedsGPU(RuntimeError):
    """A GPU notebook was started in full mode on a CPU; the message says what to switch and what it would cost."""


def gpu_guard(model, loader, epochs: int, criterion=F.cross_entropy, device=None) -> None:
    """Stop a full run of a GPU notebook (``eva.start(..., needs_gpu=True)``) on the CPU within seconds.

    Instead of silently training for hours, it times one training step on a slice of a real batch, scales
    it to an epoch, and raises :class:`NeedsGPU` with that estimate. ``EVA_ALLOW_CPU=1`` skips the check.
    The model's weights and BN statistics are restored afterwards.
    """
    device = torch.device(device or config.get_device())
    if device.type != "cpu" or not config.needs_gpu() or config.is_smoke() or os.environ.get("EVA_ALLOW_CPU"):
        return
    x, y = next(iter(loader))
    n = min(64, len(y))
    state = copy.deepcopy(model.state_dict())
    model.to(device).train()
    for _ in range(2):  # the first step pays one-off costs; time the second
        t0 = time.perf_counter()
        criterion(model(x[:n].to(device)).float(), y[:n].to(device)).backward()
        seconds = (time.perf_counter() - t0) * len(y) / n * len(loader)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    raise NeedsGPU(
        f"This notebook needs a GPU, and this full run is on the CPU: one training epoch would take about "
        f"{seconds / 60:.0f} min here ({epochs} epochs: about {seconds * epochs / 3600:.1f} h; measured on one step "
        f"of {n} images). On Colab: Runtime > Change runtime type > T4 GPU, then Run all. "
        f"(To train on the CPU anyway, set EVA_ALLOW_CPU=1.)")


@dataclass
class History:
    """Per-epoch measurements of one training run (accuracies in percent)."""

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)
    device: str = ""
    started: str = ""  # when this training run began (UTC, ISO 8601): the ledger's "started"
    seed: int | None = None  # the last seed_everything() seed when it began: the ledger's "seed"

    @property
    def epochs(self) -> int:
        return len(self.test_acc)

    @property
    def wall_s(self) -> float:
        return float(sum(self.epoch_time))

    @property
    def best_epoch(self) -> int:
        """1-based epoch of the best test accuracy (the first one, if tied)."""
        return int(np.argmax(self.test_acc)) + 1

    def last(self, k: int) -> list:
        """Test accuracies of the last ``k`` epochs."""
        return self.test_acc[-k:]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, epoch, model, optimizer, scheduler, scaler, history) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history.to_dict(),
        "rng": _rng_state(),
    }, tmp)
    os.replace(tmp, path)  # atomic: a run killed mid-save leaves the previous checkpoint intact


def _load_checkpoint(path: Path, model, optimizer, scheduler, scaler, device):
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt["scaler"] is not None:
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    rng["torch"] = rng["torch"].cpu()
    if "cuda" in rng:
        rng["cuda"] = [s.cpu() for s in rng["cuda"]]
    _set_rng_state(rng)
    return ckpt["epoch"], History.from_dict(ckpt["history"])


def evaluate(model, loader, device=None, criterion=F.cross_entropy) -> tuple[float, float]:
    """Mean loss and accuracy (percent) of ``model`` on ``loader``, in eval mode, without gradients."""
    device = model_device(model, device)
    loss_sum, correct, seen = 0.0, 0, 0
    with modes_restored(model, train=False), torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss_sum += criterion(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
    return loss_sum / seen, 100.0 * correct / seen


def _checkpoint_path(checkpoint) -> Path | None:
    """``"auto"``: the current run's next checkpoint file (none outside ``eva.start``'s run or in a smoke run)."""
    if checkpoint != "auto":
        return Path(checkpoint) if checkpoint else None
    run = current_run()
    return None if run is None or config.is_smoke() else run.next_checkpoint()


def _check_loss(loss_sum: torch.Tensor, batches: int, first: float | None, epoch, batch, lr, limit, where):
    mean = (loss_sum / batches).item()
    if not math.isfinite(mean) or (first is not None and mean > limit * max(first, 1e-3)):
        raise TrainingDiverged(
            f"Training stopped: the loss became {mean:.4g} at epoch {epoch}, batch {batch} (lr {lr:.3g}"
            f"{'' if first is None else f', first batches {first:.3g}'}). The weights are no longer useful. "
            f"Lower the learning rate, or check the data and the model's output layer. {where}"
        )
    return mean


def backward_step(loss, optimizer, scaler=None) -> None:
    """Backward pass and optimiser step; with a GradScaler (float16 AMP) the loss is scaled first so that
    small gradients do not underflow, and the step is skipped if any gradient overflowed."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def fit(model, train_loader, test_loader, optimizer, epochs: int, scheduler=None, scheduler_step: str = "epoch",
        criterion=F.cross_entropy, device=None, amp: bool = False, checkpoint="auto", resume: bool = False,
        diverge_factor: float = 100.0, on_epoch_end=None, verbose: bool = True, eval_name: str = "test") -> History:
    """Train ``model`` for ``epochs`` epochs (1 in a smoke run) and test it after each one.

    Each epoch is the loop of notebook 01 -- for every batch: forward, loss, backward, optimiser
    step; then the test set without gradients -- plus the bookkeeping: the device, a History,
    progress bars, a fresh augmentation stream per epoch, checkpoints, the divergence guard.

    Args:
        scheduler: an LR scheduler, stepped once per epoch (``scheduler_step="epoch"``,
            e.g. StepLR) or after every batch (``"batch"``, e.g. OneCycleLR, whose
            ``steps_per_epoch`` counts batches).
        criterion: the loss. ``F.cross_entropy`` also suits models that end in
            ``log_softmax`` (log-softmax of log-probabilities changes nothing).
        device: where to train; default the best available (``config.get_device``).
        amp: mixed precision on a CUDA GPU (ignored elsewhere).
        checkpoint: ``"auto"`` (under the current run, see the module docstring), a path,
            or ``None`` for none. ``resume=True`` continues from it when it exists.
        diverge_factor: stop when the mean loss exceeds this multiple of the first batches'.
        on_epoch_end: called as ``on_epoch_end(epoch, history)`` after each epoch.
        eval_name: what ``test_loader`` holds, as the epoch lines name it (``"val"`` for a validation split).
    """
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', not {scheduler_step!r}")
    device = torch.device(device or config.get_device())
    model.to(device)
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    gpu_guard(model, train_loader, epochs, criterion, device)
    epochs = config.epochs(epochs)
    history, start = History(device=config.device_name(device), started=config.now(), seed=config.current_seed()), 1
    ckpt = _checkpoint_path(checkpoint)
    if resume and ckpt is None and not (checkpoint == "auto" and config.is_smoke()):
        raise ValueError("resume=True needs a checkpoint to resume from: checkpoint=<path>, or the default "
                         "checkpoint='auto' inside a run begun with eva.start()")
    if resume and ckpt is not None and ckpt.exists():
        done, history = _load_checkpoint(ckpt, model, optimizer, scheduler, scaler, device)
        start = done + 1
        if verbose:
            print(f"Resumed from {config.shown_path(ckpt)} after epoch {done}/{epochs}")
    where = f"Last good checkpoint: {config.shown_path(ckpt)}." if ckpt else ""
    first_loss = None

    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        if hasattr(train_loader.dataset, "reseed"):  # a fresh, reproducible augmentation stream per epoch
            train_loader.dataset.reseed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not config.progress_bars())
        for batch, (x, y) in enumerate(bar, 1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                out = model(x)
                loss = criterion(out.float(), y)
            backward_step(loss, optimizer, scaler)
            if scheduler is not None and scheduler_step == "batch":
                scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if batch % 10 == 0 or batch == len(train_loader):  # one GPU sync per 10 batches
                mean = _check_loss(loss_sum, seen, first_loss, epoch, batch, lr, diverge_factor, where)
                first_loss = mean if first_loss is None else first_loss
                bar.set_postfix(loss=f"{mean:.4f}", acc=f"{100.0 * correct.item() / seen:.2f}")
        train_loss, train_acc = loss_sum.item() / seen, 100.0 * correct.item() / seen
        test_loss, test_acc = evaluate(model, test_loader, device, criterion)
        if scheduler is not None and scheduler_step == "epoch":
            scheduler.step()
        for name, value in (("train_loss", train_loss), ("train_acc", train_acc), ("test_loss", test_loss),
                            ("test_acc", test_acc), ("lr", lr), ("epoch_time", time.perf_counter() - t0)):
            getattr(history, name).append(value)
        if verbose:
            print(f"epoch {epoch:2d}/{epochs}  lr {lr:.4g}  train loss {train_loss:.4f} acc {train_acc:6.2f}%  "
                  f"{eval_name} loss {test_loss:.4f} acc {test_acc:6.2f}%  ({history.epoch_time[-1]:.1f} s)", flush=True)
        if ckpt is not None:
            _save_checkpoint(ckpt, epoch, model, optimizer, scheduler, scaler, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history
