"""Learning-rate range test ("LR finder"), built on ``torch-lr-finder``.

Idea (Leslie Smith, 2015): train for a few hundred mini-batches while the
learning rate grows exponentially from tiny to huge, and record the loss.

* lr too small  -> the loss barely moves (flat left part of the curve);
* lr about right -> the loss falls fastest (steepest part of the curve);
* lr too large  -> the loss explodes (right part; the test stops early).

Two numbers are read off the curve (both are in :class:`LRResult`):

* ``suggested_lr`` - where the (smoothed) loss falls fastest, i.e. the most
  negative slope.  This is torch-lr-finder's own suggestion.  A good *fixed*
  learning rate to start from.
* ``max_lr`` - **the lr at the minimum of the loss divided by 10**.  The
  minimum sits just before the blow-up, so a tenth of it is the largest lr
  that is still comfortably stable: use it as ``max_lr`` of ``OneCycleLR``,
  which only reaches it briefly in the middle of training (fastai's classic
  rule).

The test *trains* the model, so afterwards the weights and the optimizer
state are put back exactly as they were (``LRFinder.reset()``), even if the
test is interrupted: you can start the real training right after.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import config
from .modelstate import modes_restored

__all__ = ["LRResult", "find_lr"]


@dataclass(repr=False)
class LRResult:
    """Outcome of :func:`find_lr`.

    ``lrs``/``losses``: the whole curve, one point per iteration (losses are
    exponentially smoothed by torch-lr-finder); ``history``: the same data in
    torch-lr-finder's format ``{"lr": [...], "loss": [...]}``;
    ``suggested_lr``: steepest descent of the curve (after trimming
    ``skip_start``/``skip_end`` points); ``min_loss_lr``: lr at the lowest loss
    of the trimmed curve; ``max_lr = min_loss_lr / 10`` (for ``OneCycleLR``);
    ``stopped_early``: the loss diverged before ``num_iter``; ``fig``: the plot
    (``None`` if ``plot=False``).
    """

    lrs: list
    losses: list
    suggested_lr: float
    max_lr: float
    min_loss_lr: float
    history: dict
    stopped_early: bool = False
    fig: Any = field(default=None, compare=False)

    def __repr__(self) -> str:  # short and deterministic: no lists, no addresses
        return (
            f"LRResult(suggested_lr={self.suggested_lr:.2e}, max_lr={self.max_lr:.2e}, "
            f"min_loss_lr={self.min_loss_lr:.2e}, iterations={len(self.lrs)}, "
            f"stopped_early={self.stopped_early})"
        )


def find_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion,
    train_loader,
    end_lr: float = 10,
    num_iter: int = 100,
    start_lr: float | None = None,
    step_mode: str = "exp",
    device=None,
    plot: bool = True,
    *,
    skip_start: int = 10,
    skip_end: int = 5,
    smooth_f: float = 0.05,
    diverge_th: float = 5,
    val_loader=None,
    progress: bool | None = None,
    verbose: bool = True,
) -> LRResult:
    """Run an LR range test and return what it found (see the module docstring).

    ``optimizer`` is the one you will train with (its momentum / weight decay
    matter).  The lr grows from ``start_lr`` (default: the optimizer's current
    lr) to ``end_lr`` over ``num_iter`` mini-batches, exponentially
    (``step_mode="exp"``, the usual choice over several decades) or linearly.
    If ``train_loader`` has fewer than ``num_iter`` batches it is simply
    restarted (torch-lr-finder cycles it).  ``device`` defaults to the model's
    device.  The test stops early when the smoothed loss exceeds
    ``diverge_th`` x its best value.  ``skip_start``/``skip_end`` points are
    ignored when reading the suggestion (the first points are noisy, the last
    ones exploding), so ``num_iter`` must be at least
    ``skip_start + skip_end + 2``.

    ``plot=True`` shows loss vs lr (log scale) with both suggestions marked.
    ``progress=False`` hides torch-lr-finder's tqdm bar (``None``: shown unless
    ``EVA_PROGRESS=0``, as ``eva run`` sets); ``verbose=False``
    prints nothing.  Model weights, optimizer state (lr, momentum buffers...)
    and training flags are restored afterwards, even on error or interrupt.
    Note: torch-lr-finder refuses an optimizer that already has an lr
    scheduler attached - create the scheduler *after* the range test.
    """
    from torch_lr_finder import LRFinder
    from torch_lr_finder import lr_finder as _lrf_module

    if num_iter < skip_start + skip_end + 2:
        raise ValueError(
            f"num_iter={num_iter} is too small: the suggestion ignores the first "
            f"skip_start={skip_start} and last skip_end={skip_end} points and needs at "
            f"least 2 more, so use num_iter >= {skip_start + skip_end + 2} "
            f"(or lower skip_start/skip_end)."
        )
    if step_mode not in ("exp", "linear"):
        raise ValueError(f"step_mode must be 'exp' or 'linear', got {step_mode!r}")
    first_lr = start_lr if start_lr is not None else optimizer.param_groups[0]["lr"]
    if start_lr is not None and start_lr <= 0:
        raise ValueError(f"start_lr must be > 0, got {start_lr}")
    if not first_lr < end_lr:
        raise ValueError(f"the range test needs start lr < end_lr, got {first_lr} and {end_lr}")

    from .train import gpu_guard

    gpu_guard(model, train_loader, 1, criterion, device)  # a full run of a GPU notebook on a CPU stops here
    if not isinstance(train_loader, torch.utils.data.DataLoader):  # e.g. fastdata.DeviceLoader: any (x, y) iterable
        train_loader = _lrf_module.TrainDataLoaderIter(train_loader)
    finder = LRFinder(model, optimizer, criterion, device=device)
    library_output = io.StringIO()
    saved_tqdm = _lrf_module.tqdm
    if progress is None:
        progress = config.progress_bars()
    with modes_restored(model):
        try:
            if not progress:
                _lrf_module.tqdm = functools.partial(saved_tqdm, disable=True)
            # torch-lr-finder prints its own messages (one with a literal
            # "{finder_name}" placeholder): keep stdout clean and deterministic.
            with contextlib.redirect_stdout(library_output):
                finder.range_test(train_loader, val_loader=val_loader, start_lr=start_lr, end_lr=end_lr,
                                  num_iter=num_iter, step_mode=step_mode, smooth_f=smooth_f, diverge_th=diverge_th)
        finally:
            _lrf_module.tqdm = saved_tqdm
            finder.reset()  # weights + optimizer state back to what they were before the test

    lrs = [float(v) for v in finder.history["lr"]]
    losses = [float(v) for v in finder.history["loss"]]
    stopped_early = len(lrs) < num_iter

    s_start, s_end = skip_start, skip_end
    if len(lrs) < s_start + s_end + 2:
        # Diverged very early: trim less rather than fail.
        s_end = 0
        s_start = max(0, min(s_start, len(lrs) - 2))
        if len(lrs) < 2:
            raise RuntimeError(
                f"the loss diverged after {len(lrs)} iteration(s), nothing to read; "
                "lower end_lr or raise diverge_th"
            )
        warnings.warn(
            f"the loss diverged after {len(lrs)} iterations; reading the curve with "
            f"skip_start={s_start}, skip_end={s_end} instead of {skip_start}, {skip_end}",
            stacklevel=2,
        )

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    with contextlib.redirect_stdout(library_output):
        # With an `ax` given, LRFinder.plot draws into it and does not call plt.show().
        _, suggested = finder.plot(skip_start=s_start, skip_end=s_end, ax=ax, suggest_lr=True)
    trimmed_lrs = lrs[s_start: len(lrs) - s_end]
    trimmed_losses = losses[s_start: len(losses) - s_end]
    min_loss_lr = trimmed_lrs[int(np.argmin(trimmed_losses))]
    max_lr = min_loss_lr / 10

    if plot:
        ax.axvline(max_lr, color="tab:green", linestyle="--", label=f"max_lr = min-loss lr / 10 = {max_lr:.2e}")
        ax.set_title("LR range test")
        ax.legend()
        fig.tight_layout()
        plt.show()
    else:
        plt.close(fig)
        fig = None

    if verbose:
        mode = "exponentially" if step_mode == "exp" else "linearly"
        print(f"LR range test: lr grown {mode} from {lrs[0]:.2e} to {lrs[-1]:.2e} over {len(lrs)} iterations")
        if stopped_early:
            print(f"stopped early: the loss diverged after {len(lrs)} of {num_iter} iterations")
        print(f"steepest loss descent at lr = {suggested:.2e}  (suggested_lr)")
        print(f"lowest loss at lr = {min_loss_lr:.2e}  ->  OneCycle max_lr = {max_lr:.2e}")
        print("model and optimizer restored to their initial state")

    return LRResult(
        lrs=lrs,
        losses=losses,
        suggested_lr=float(suggested),
        max_lr=float(max_lr),
        min_loss_lr=float(min_loss_lr),
        history={"lr": list(lrs), "loss": list(losses)},
        stopped_early=stopped_early,
        fig=fig,
    )
