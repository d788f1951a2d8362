"""Look at the data and the training curves (the model's mistakes: ``mistakes.py``).

Everything here takes images exactly as they come out of a dataset: tensors
of shape ``(C, H, W)`` that were *normalised* (``x = (pixel - mean) / std``).
To look at them we undo that: ``pixel = x * std + mean`` (see
:func:`denormalize`).  Pass the same per-channel ``mean`` and ``std`` tuples
you gave to ``Normalize``.  One-channel images are drawn in grey.

Figures are shown with ``plt.show()`` and, by default, the functions return
``None`` so that a notebook cell shows each figure exactly once.  Pass
``return_fig=True`` to also get the :class:`matplotlib.figure.Figure` back
(for saving it or for tests): ``fig = show_samples(ds, return_fig=True)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch
from torch.utils.data import DataLoader

from . import config

__all__ = ["denormalize", "show_samples", "plot_history"]


# --------------------------------------------------------------------------- helpers
def denormalize(img, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Turn a normalised ``(C, H, W)`` tensor back into a displayable image.

    Returns a float32 array in ``[0, 1]``: ``(H, W)`` for one channel,
    ``(H, W, C)`` otherwise (matplotlib wants channels last).  With
    ``mean``/``std`` it computes ``img * std + mean`` per channel; without them
    an image already in ``[0, 1]`` is kept and anything else is min-max
    rescaled, so you still see *something* sensible.
    """
    if isinstance(img, torch.Tensor):
        x = img.detach().cpu().float().numpy()
    else:
        x = np.asarray(img, dtype=np.float32)
        if x.ndim == 3 and x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3):
            x = x.transpose(2, 0, 1)  # (H, W, C) numpy image -> (C, H, W)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got {tuple(x.shape)}")
    c = x.shape[0]
    if mean is not None and std is not None:
        m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        if m.shape[0] not in (1, c) or s.shape[0] not in (1, c):
            raise ValueError(f"mean/std have {m.shape[0]}/{s.shape[0]} values for a {c}-channel image")
        x = x * s + m
    elif x.min() < 0 or x.max() > 1:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return x[0] if c == 1 else x.transpose(1, 2, 0)


def _show_image(ax, img, mean, std, title: str | None = None) -> None:
    arr = denormalize(img, mean, std)
    if arr.ndim == 2:
        ax.imshow(arr, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(arr)
    if title is not None:
        ax.set_title(title, fontsize=8)
    ax.axis("off")


def _label_name(label, classes) -> str:
    label = int(label)
    if classes is not None and 0 <= label < len(classes):
        return str(classes[label])
    return str(label)


def _grid(n: int, ncols: int, cell: float = 1.6, title: str | None = None):
    """A figure with exactly ``n`` axes laid out in rows of ``ncols``."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell, nrows * (cell + 0.25)), squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    return fig, axes[:n]


SMOKE_LABEL = "SMOKE RUN: not results"


def _label_smoke(fig) -> None:
    """In a smoke run, put SMOKE in the figure's title: a plot of a smoke run must never pass for a result."""
    if not config.is_smoke():
        return
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    if "SMOKE" not in title:
        fig.suptitle(f"{SMOKE_LABEL} | {title}" if title else SMOKE_LABEL, color="tab:red")


def _finish(fig, return_fig: bool):
    _label_smoke(fig)
    fig.tight_layout()
    plt.show()
    if return_fig:
        return fig
    if not matplotlib.is_interactive() and matplotlib.get_backend().lower() == "agg":
        plt.close(fig)  # plain scripts: nothing can be shown, don't leak figures
    return None


def show(fig) -> None:
    """Show a figure drawn in a lesson cell the way the package's own plots are shown (tight layout; in a smoke
    run, SMOKE in its title)."""
    _finish(fig, return_fig=False)


def _split_batch(batch):
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("expected batches of (images, labels, ...)")


def _take(dataset_or_loader, n: int):
    """First ``n`` (image, label) pairs of a Dataset or a DataLoader."""
    images, labels = [], []
    if isinstance(dataset_or_loader, DataLoader):
        for batch in dataset_or_loader:
            xb, yb = _split_batch(batch)
            for x, y in zip(xb, yb):
                images.append(x)
                labels.append(int(y))
                if len(images) >= n:
                    return images, labels
    else:
        for i in range(min(n, len(dataset_or_loader))):
            x, y = dataset_or_loader[i][:2]
            images.append(x if isinstance(x, torch.Tensor) else np.asarray(x))  # numpy/PIL: (H, W, C)
            labels.append(int(y))
    return images, labels


# --------------------------------------------------------------------------- data
def show_samples(
    dataset_or_loader,
    classes: Sequence[str] | None = None,
    n: int = 16,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ncols: int = 8,
    title: str | None = None,
    return_fig: bool = False,
):
    """Grid of the first ``n`` images with their labels.

    Always look at your data before training: after augmentation, are the
    digits still readable?  are the labels right?  With a DataLoader you see
    what the model will see (shuffled, augmented); with a Dataset you see
    items ``0..n-1``.
    """
    images, labels = _take(dataset_or_loader, n)
    if not images:
        print("show_samples: the dataset is empty, nothing to show.")
        return None
    fig, axes = _grid(len(images), ncols, title=title)
    for ax, img, y in zip(axes, images, labels):
        _show_image(ax, img, mean, std, _label_name(y, classes))
    return _finish(fig, return_fig)


# --------------------------------------------------------------------------- curves
def _series(history, name: str) -> list:
    value = history.get(name) if isinstance(history, dict) else getattr(history, name, None)
    return [float(v) for v in value] if value is not None else []


def _runs(history) -> dict:
    """One run -> ``{"": run}``; a dict of runs (``{label: run}``, no ``test_acc`` key of its own) as it is."""
    if isinstance(history, dict) and "test_acc" not in history:
        return {str(label): h for label, h in history.items() if h is not None}
    return {"": history}


def _epoch_axis(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _zoom_last(ax, runs: dict, last: int) -> None:
    """The accuracy of the last ``last`` epochs on a y-scale fitted to them, so 0.1-point steps are visible."""
    values = []
    for n, (label, h) in enumerate(runs.items()):
        for split, style in (("train", "--"), ("test", "-")):
            acc = _series(h, f"{split}_acc")
            if len(acc) < 2:
                continue
            tail = acc[-last:]
            epochs = range(len(acc) - len(tail) + 1, len(acc) + 1)
            colour = {"color": f"C{n}"} if label else {"color": "C0" if split == "train" else "C1"}
            ax.plot(epochs, tail, style if label else "-", marker="o", markersize=3, **colour)
            values += tail
            if split == "test" and len(runs) <= 2:  # few runs: write the test values on the points
                for x, y in zip(epochs, tail):
                    ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 4), ha="center",
                                fontsize=7, **colour)
    if values:
        low, high = min(values), max(values)
        pad = max(0.05, 0.15 * (high - low))
        ax.set_ylim(low - pad, high + 2 * pad)
    _epoch_axis(ax, "accuracy (%)", f"Accuracy, last {last} epochs")


def plot_history(history, return_fig: bool = False, acc_ylim=None, last: int = 5):
    """Loss and accuracy per epoch, train vs test, side by side: of one run, or of several to compare.

    ``history`` has lists ``train_loss, train_acc, test_loss, test_acc``
    (accuracy in percent) and ``lr`` - as attributes (a ``History``) or dict
    keys.  Or it is a dict of such runs, ``{label: history}``: each run gets
    its own colour, its test curve solid and its train curve dashed, and the
    accuracy panel's legend pairs them (``label train``, ``label test``).
    When there are more than ``last`` epochs, a third panel zooms on the
    accuracy of the last ``last`` epochs (y-scale fitted to them, test values
    written on the points for one or two runs), where the final 0.1-point
    differences are visible.  A last, small panel shows the learning rate
    when it changes during training (e.g. OneCycle or StepLR).
    ``acc_ylim=(low, high)`` sets the full accuracy panel's y-range.

    How to read it: train loss falling while test loss rises = over-fitting;
    both high and flat = under-fitting (model too small or lr wrong); test
    accuracy above train accuracy is normal with strong augmentation/dropout,
    which only act during training.
    """
    runs = _runs(history)
    lrs = {label: _series(h, "lr") for label, h in runs.items()}
    show_lr = any(len(set(lr)) > 1 for lr in lrs.values())
    epochs = max((len(_series(h, "test_acc")) for h in runs.values()), default=0)
    show_zoom = last and epochs > last
    widths = [1, 1] + ([0.8] if show_zoom else []) + ([0.6] if show_lr else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(4.5 * sum(widths), 3.5), gridspec_kw={"width_ratios": widths})
    for n, (label, h) in enumerate(runs.items()):
        colour = {"color": f"C{n}"} if label else {}  # one run: matplotlib's train/test colours
        for ax, metric in zip(axes, ("loss", "acc")):
            for split, style in (("train", "--" if label else "-"), ("test", "-")):
                values = _series(h, f"{split}_{metric}")
                if values:
                    ax.plot(range(1, len(values) + 1), values, style, marker="o", markersize=3,
                            label=f"{label} {split}".strip(), **colour)
        if show_lr and lrs[label]:
            axes[-1].plot(range(1, len(lrs[label]) + 1), lrs[label], label=label or None,
                          **(colour or {"color": "tab:green"}))
    _epoch_axis(axes[0], "loss", "Loss")
    _epoch_axis(axes[1], "accuracy (%)", "Accuracy")
    if acc_ylim is not None:
        axes[1].set_ylim(*acc_ylim)
    for ax in axes[:2] if len(runs) == 1 else axes[1:2]:  # several runs: one legend, beside the accuracy
        if ax.lines:
            ax.legend(fontsize=7 if len(runs) > 3 else None)
    if show_zoom:
        _zoom_last(axes[2], runs, last)
    if show_lr:
        ax = axes[-1]
        _epoch_axis(ax, "lr", "Learning rate")
        ax.set_xlabel("epoch" if max(len(lr) for lr in lrs.values()) == max(epochs, 1) else "step")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _finish(fig, return_fig)
