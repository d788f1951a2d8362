"""The model's mistakes: which test images it gets wrong, where it looked (Grad-CAM), how each class fares.

Looking at the errors tells you what to fix: ambiguous images (label noise, nothing to do), a systematic
confusion (more capacity or augmentation), or a bug (all predictions the same class). Every function here runs
the model in eval mode without gradients and leaves it as it found it (``modelstate.modes_restored``); images
are shown as in ``plots.py`` (pass the ``mean``/``std`` of the normalisation).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .modelstate import model_device, modes_restored
from .plots import _finish, _grid, _label_name, _show_image, _split_batch, denormalize

__all__ = ["misclassified", "show_misclassified", "gradcam_heatmaps", "show_gradcam", "per_class_accuracy"]


def _predictions(model: nn.Module, loader: Iterable, device=None) -> Iterator[tuple]:
    """Yield ``(images_cpu, labels_cpu, preds_cpu)`` per batch, eval mode, no grad.

    The training flags of all modules are restored when the generator finishes
    or is closed early.
    """
    device = model_device(model, device)
    with modes_restored(model, train=False), torch.no_grad():
        for batch in loader:
            images, labels = _split_batch(batch)
            preds = model(images.to(device)).argmax(dim=1).cpu()
            yield images.cpu(), torch.as_tensor(labels).cpu(), preds



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
    fig, axes = _grid(len(samples), ncols, cell=1.9, title="misclassified: true → predicted")
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

    with modes_restored(model):
        cam = GradCAM(model=model, target_layers=[target_layer])
        try:
            # No `with GradCAM(...)`: its __exit__ silently swallows IndexError
            # (e.g. a class index out of range) and returns nothing.
            with torch.enable_grad():
                maps = cam(input_tensor=batch, targets=cam_targets)
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
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
    fig, axes = _grid(len(samples), ncols, cell=1.9, title="Grad-CAM of the predicted class: true → predicted")
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
