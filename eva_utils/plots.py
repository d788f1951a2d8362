"""Look at the data, the training curves and the model's mistakes.

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
from typing import Iterable, Iterator, Sequence

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = [
    "denormalize",
    "show_samples",
    "plot_history",
    "misclassified",
    "show_misclassified",
    "gradcam_heatmaps",
    "show_gradcam",
    "per_class_accuracy",
]


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


def _finish(fig, return_fig: bool):
    fig.tight_layout()
    plt.show()
    if return_fig:
        return fig
    if not matplotlib.is_interactive() and matplotlib.get_backend().lower() == "agg":
        plt.close(fig)  # plain scripts: nothing can be shown, don't leak figures
    return None


def _device_of(model: nn.Module, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _split_batch(batch):
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("expected batches of (images, labels, ...)")


def _predictions(model: nn.Module, loader: Iterable, device=None) -> Iterator[tuple]:
    """Yield ``(images_cpu, labels_cpu, preds_cpu)`` per batch, eval mode, no grad.

    The training flags of all modules are restored when the generator finishes
    or is closed early.
    """
    device = _device_of(model, device)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                images, labels = _split_batch(batch)
                out = model(images.to(device))
                preds = out.argmax(dim=1).cpu()
                yield images.cpu(), torch.as_tensor(labels).cpu(), preds
    finally:
        for m, flag in flags:
            m.training = flag


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
    return list(value) if value is not None else []


def plot_history(history, return_fig: bool = False):
    """Loss and accuracy per epoch, train vs test, side by side.

    ``history`` has lists ``train_loss, train_acc, test_loss, test_acc``
    (accuracy in percent) and ``lr`` - as attributes or dict keys.  A third,
    small panel shows the learning rate when it changes during training (e.g.
    OneCycle or StepLR).

    How to read it: train loss falling while test loss rises = over-fitting;
    both high and flat = under-fitting (model too small or lr wrong); test
    accuracy above train accuracy is normal with strong augmentation/dropout,
    which only act during training.
    """
    train_loss, test_loss = _series(history, "train_loss"), _series(history, "test_loss")
    train_acc, test_acc = _series(history, "train_acc"), _series(history, "test_acc")
    lr = [float(v) for v in _series(history, "lr")]
    show_lr = len(lr) > 1 and len(set(lr)) > 1

    ncols = 3 if show_lr else 2
    widths = [1, 1, 0.6] if show_lr else [1, 1]
    fig, axes = plt.subplots(1, ncols, figsize=(4.5 * sum(widths), 3.5), gridspec_kw={"width_ratios": widths})

    def draw(ax, series, ylabel, title):
        for values, label in series:
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if any(v for v, _ in series):
            ax.legend()

    draw(axes[0], [(train_loss, "train"), (test_loss, "test")], "loss", "Loss")
    draw(axes[1], [(train_acc, "train"), (test_acc, "test")], "accuracy (%)", "Accuracy")
    if show_lr:
        ax = axes[2]
        ax.plot(range(1, len(lr) + 1), lr, color="tab:green")
        ax.set_xlabel("epoch" if len(lr) == max(len(train_loss), len(test_loss), 1) else "step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("lr")
        ax.set_title("Learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
    return _finish(fig, return_fig)


# --------------------------------------------------------------------------- mistakes
def misclassified(model: nn.Module, loader: Iterable, device=None, limit: int | None = None) -> list:
    """All samples of ``loader`` the model gets wrong, in loader order.

    Returns a list of ``(image, true_label, predicted_label)`` with the image
    as stored in the dataset (normalised, on the CPU) and ints for labels.
    The prediction is the ``argmax`` of the model output (works for logits and
    log-probabilities alike).  Runs in eval mode under ``torch.no_grad()``
    (no Dropout, BatchNorm uses its running statistics) and puts the model back
    in the mode it was in.  ``device`` defaults to the model's device;
    ``limit`` stops after that many mistakes.
    """
    found: list = []
    if limit is not None and limit <= 0:
        return found
    preds_iter = _predictions(model, loader, device)
    try:
        for images, labels, preds in preds_iter:
            wrong = (preds != labels).nonzero().flatten().tolist()
            for i in wrong:
                found.append((images[i], int(labels[i]), int(preds[i])))
                if limit is not None and len(found) >= limit:
                    return found
    finally:
        preds_iter.close()  # restores the training flags even when stopping early
    return found


def show_misclassified(
    model: nn.Module,
    loader: Iterable,
    classes: Sequence[str] | None = None,
    n: int = 20,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device=None,
    ncols: int = 5,
    return_fig: bool = False,
):
    """Grid of up to ``n`` mistakes titled ``true → pred``.

    Looking at the errors tells you what to fix: ambiguous images (label noise,
    nothing to do), a systematic confusion (e.g. cat → dog: more capacity or
    augmentation), or a bug (all predictions the same class).  Prints a message
    and returns ``None`` if the model makes no mistake on ``loader``.
    """
    samples = misclassified(model, loader, device=device, limit=n)
    if not samples:
        print("No misclassified samples: the model is right on every image of this loader.")
        return None
    fig, axes = _grid(len(samples), ncols, cell=1.9)
    for ax, (img, true, pred) in zip(axes, samples):
        _show_image(ax, img, mean, std, f"{_label_name(true, classes)} → {_label_name(pred, classes)}")
    return _finish(fig, return_fig)


# --------------------------------------------------------------------------- Grad-CAM
def gradcam_heatmaps(model: nn.Module, target_layer: nn.Module, images, targets: Sequence[int] | None = None) -> np.ndarray:
    """Grad-CAM maps, one ``(H, W)`` array in ``[0, 1]`` per image.

    Grad-CAM asks "which pixels of ``target_layer``'s feature map made the
    score of class ``c`` go up?": the gradients of that score are averaged per
    channel to get one weight per channel, the channels are summed with those
    weights, negative values are clipped (ReLU) and the map is upsampled to the
    image size and scaled to ``[0, 1]``.  Use the last convolution layer: it
    still has a spatial layout and already "sees" whole objects.

    ``images`` is a ``(N, C, H, W)`` tensor or a list of ``(C, H, W)`` tensors;
    ``targets`` the class index per image (``None``: the model's own top
    prediction).  Built on pytorch-grad-cam (``GradCAM`` +
    ``ClassifierOutputTarget``); in version 1.5 the device simply follows the
    model (there is no ``use_cuda`` argument any more).  The library switches
    the model to eval mode and fills ``.grad``; this wrapper restores the
    training flags and clears the gradients again.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    if batch.ndim == 3:
        batch = batch[None]
    cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]

    flags = [(m, m.training) for m in model.modules()]
    cam = GradCAM(model=model, target_layers=[target_layer])
    try:
        # No `with GradCAM(...)`: its __exit__ silently swallows IndexError
        # (e.g. a class index out of range) and returns nothing.
        with torch.enable_grad():
            maps = cam(input_tensor=batch, targets=cam_targets)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
        for m, flag in flags:
            m.training = flag
    return np.asarray(maps, dtype=np.float32)


def show_gradcam(
    model: nn.Module,
    target_layer: nn.Module,
    samples: Sequence[tuple],
    classes: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ncols: int = 5,
    image_weight: float = 0.5,
    return_fig: bool = False,
):
    """Grad-CAM overlays for ``samples`` (a list of ``(image, true, pred)``,
    e.g. the output of :func:`misclassified`), titled ``true → pred``.

    The heat map explains the *predicted* class: red = the region that pushed
    the model towards ``pred``.  On a mistake this often shows what fooled the
    model (background, a similar-looking part...).  ``image_weight`` is how much
    of the photo shows through the colour map (pytorch-grad-cam's
    ``show_cam_on_image``).
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    samples = list(samples)
    if not samples:
        print("show_gradcam: no samples to show.")
        return None
    maps = gradcam_heatmaps(model, target_layer, [s[0] for s in samples], [s[2] for s in samples])
    fig, axes = _grid(len(samples), ncols, cell=1.9)
    for ax, (img, true, pred), mask in zip(axes, samples, maps):
        rgb = denormalize(img, mean, std)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)  # the overlay needs 3 channels
        overlay = show_cam_on_image(rgb, mask, use_rgb=True, image_weight=image_weight)
        ax.imshow(overlay)
        ax.set_title(f"{_label_name(true, classes)} → {_label_name(pred, classes)}", fontsize=8)
        ax.axis("off")
    return _finish(fig, return_fig)


# --------------------------------------------------------------------------- per class
def per_class_accuracy(model: nn.Module, loader: Iterable, classes: Sequence[str], device=None) -> dict:
    """Accuracy (percent) of each class, printed as a table and returned as a dict.

    The overall accuracy can hide a weak class: 90 % overall may be 99 % on
    most classes and 40 % on one.  Returns ``{class_name: accuracy_percent}``
    in the order of ``classes`` (``nan`` for a class absent from ``loader``).
    """
    k = len(classes)
    correct = torch.zeros(k, dtype=torch.long)
    total = torch.zeros(k, dtype=torch.long)
    for _, labels, preds in _predictions(model, loader, device):
        labels = labels.long()
        total += torch.bincount(labels, minlength=k)[:k]
        correct += torch.bincount(labels[preds == labels], minlength=k)[:k]

    result: dict = {}
    width = max([len("class")] + [len(str(c)) for c in classes])
    lines = [f"{'class':<{width}}  {'correct':>7}  {'total':>7}  {'accuracy':>8}"]
    for i, name in enumerate(classes):
        c, t = int(correct[i]), int(total[i])
        acc = 100.0 * c / t if t else float("nan")
        result[str(name)] = acc
        acc_txt = f"{acc:7.2f}%" if t else f"{'n/a':>8}"
        lines.append(f"{str(name):<{width}}  {c:>7}  {t:>7}  {acc_txt}")
    c, t = int(correct.sum()), int(total.sum())
    overall = f"{100.0 * c / t:7.2f}%" if t else f"{'n/a':>8}"
    lines.append(f"{'overall':<{width}}  {c:>7}  {t:>7}  {overall}")
    print("\n".join(lines))
    return result
