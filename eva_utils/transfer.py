"""Transfer learning: an ImageNet-pretrained torchvision model with a new head, and its input pipelines.

    from eva_utils import transfer
    model = transfer.pretrained("resnet18", num_classes=100, weights="IMAGENET1K_V1")
    transfer.freeze_backbone(model)                  # head-only training
    train_tf, test_tf = transfer.imagenet_train(224), transfer.imagenet_test(224)

Where the weights come from, in order (no network needed for the first two):

1. torch's hub cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (where torchvision keeps what it downloaded);
2. an offline copy, ``$EVA_DATA_DIR/weights/<file>`` (the same file, e.g. ``resnet18-f37072fd.pth``);
3. torchvision's download (what happens on Colab) -- in a **full** run only.

A full run that cannot get the weights stops with ``WeightsUnavailableError``: it never
falls back to random weights, since a "pretrained" result from random weights would be a lie.
A **smoke** run never downloads (smoke runs are offline): without a local copy it uses
random weights and says so loudly; ``model.weights_loaded`` tells which happened.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import albumentations as A
import cv2
import torch
import torch.nn as nn

from . import config
from .augment import to_tensor

# The statistics of ImageNet's training images (pixel values in [0, 1]): pretrained weights expect inputs
# normalised with these, whatever the new dataset is.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: ImageNet evaluation convention: resize the shorter side to 256, then crop the central 224×224.
RESIZE_RATIO = 256 / 224


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable. The message says where we looked."""


# --------------------------------------------------------------------------- weights
def _weights_enum(name: str, weights):
    """``"IMAGENET1K_V1"`` / ``"DEFAULT"`` / an enum member -> the torchvision ``WeightsEnum`` member."""
    from torchvision.models import get_model_weights

    if isinstance(weights, str):
        enum = get_model_weights(name)
        try:
            return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ValueError(f"{name} has no weights {weights!r}; choose from {[w.name for w in enum]}") from None
    return weights


def weight_files(weights) -> list[Path]:
    """Where a local copy of ``weights`` may be: the hub cache, then ``$EVA_DATA_DIR/weights/``."""
    filename = os.path.basename(urlparse(weights.url).path)
    return [Path(torch.hub.get_dir()) / "checkpoints" / filename, config.data_dir() / "weights" / filename]


def load_weights(weights, smoke=None, progress: bool = True) -> dict | None:
    """The state dict of ``weights`` (a torchvision ``WeightsEnum`` member), or ``None`` in smoke mode without a copy.

    ``smoke``: ``None`` follows the run mode; ``True``/``False`` force it.
    """
    smoke = config.is_smoke() if smoke is None else bool(smoke)
    for path in weight_files(weights):
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    if smoke:
        return None  # smoke runs are offline: never download
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except Exception as err:  # no network, a proxy, a truncated file...
        first = (str(err).strip().splitlines() or [""])[0][:160]
        looked = " and ".join(str(p) for p in weight_files(weights))
        raise WeightsUnavailableError(
            f"The pretrained weights {weights} could not be loaded: looked for {looked}, and downloading "
            f"{weights.url} failed ({type(err).__name__}: {first}). Run with internet access, or copy that file "
            "into one of those places (TORCH_HOME and EVA_DATA_DIR choose them). A full run never falls back to "
            "random weights."
        ) from None


def replace_head(model: nn.Module, num_classes: int, head: str = "fc") -> nn.Module:
    """Swap the classifier ``model.<head>`` (a ``Linear``) for a freshly initialised one with ``num_classes`` outputs."""
    old = getattr(model, head, None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"{type(model).__name__}.{head} is not a Linear layer; pass head=<name of the classifier>")
    setattr(model, head, nn.Linear(old.in_features, num_classes))
    return model


def pretrained(name: str = "resnet18", num_classes: int = 100, weights="IMAGENET1K_V1", smoke=None,
               head: str = "fc", progress: bool = True) -> nn.Module:
    """A torchvision model (``resnet18``, ``resnet34``, ...) with pretrained weights and a new ``num_classes`` head.

    ``weights``: the name of a member of the model's weights enum (``"IMAGENET1K_V1"``, ``"DEFAULT"``), the member
    itself (``ResNet18_Weights.IMAGENET1K_V1``), or ``None`` for random weights on purpose.
    Sets ``model.weights_loaded`` to the weights' name, or ``None`` when the weights are random.
    """
    from torchvision.models import get_model

    model = get_model(name, weights=None)  # the architecture with ImageNet's 1000-class head, random weights
    loaded = None
    if weights is not None:
        weights = _weights_enum(name, weights)
        state = load_weights(weights, smoke=smoke, progress=progress)
        if state is None:
            print(f"NOTE: no local copy of {weights} (looked for "
                  f"{' and '.join(config.shown_path(p) for p in weight_files(weights))}).\n"
                  f"SMOKE MODE: {name} keeps RANDOM weights. Nothing trained from it says anything about "
                  "transfer learning; a full run downloads the real weights or stops.")
        else:
            model.load_state_dict(state)
            loaded = str(weights)
    replace_head(model, num_classes, head)
    model.weights_loaded = loaded
    return model


# --------------------------------------------------------------------------- what trains
def _frozen_bn_eval(module: nn.Module, _inputs) -> None:
    module.train(False)


def freeze_backbone(model: nn.Module, head: str = "fc") -> int:
    """Train only ``model.<head>``: every other parameter stops requiring gradients.

    The BatchNorm layers of the backbone are frozen too: a forward pre-hook keeps them in eval mode,
    so they normalise with (and never update) their ImageNet running statistics -- even though the
    training loop calls ``model.train()`` every epoch. Returns the number of trainable parameters.
    """
    head_module = getattr(model, head, None)
    if head_module is None:
        raise ValueError(f"{type(model).__name__} has no attribute {head!r}")
    head_params = {id(p) for p in head_module.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params)
    head_modules = set(head_module.modules())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head_modules:
            m.register_forward_pre_hook(_frozen_bn_eval)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def discriminative_groups(model: nn.Module, lr: float, backbone_factor: float = 0.1,
                          head: str = "fc") -> list[dict]:
    """Discriminative learning rates: ``lr`` for the new head, ``lr * backbone_factor`` for the pretrained rest.

    Two parameter groups, the head first (so a training log showing the first group's rate shows the head's).
    Pass them to an optimiser; ``OneCycleLR(max_lr=[g["lr"] for g in groups])`` keeps the ratio.
    """
    head_ids = {id(p) for p in getattr(model, head).parameters()}
    top = [p for p in model.parameters() if id(p) in head_ids and p.requires_grad]
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    return [{"params": top, "lr": lr, "name": "head"}, {"params": body, "lr": lr * backbone_factor, "name": "backbone"}]


# --------------------------------------------------------------------------- pipelines
def imagenet_train(size: int = 224, scale=(0.08, 1.0), flip: float = 0.5) -> A.Compose:
    """Random-resized-crop to ``size``×``size`` + horizontal flip + ImageNet normalisation.

    RandomResizedCrop picks a random region covering ``scale`` (a fraction range) of the image's area, with an
    aspect ratio in [3/4, 4/3], and resizes it to ``size`` (a 32×32 CIFAR image is thus *upscaled*).
    """
    return A.Compose([A.RandomResizedCrop(size=(size, size), scale=tuple(scale), interpolation=cv2.INTER_LINEAR),
                      A.HorizontalFlip(p=flip), *to_tensor(IMAGENET_MEAN, IMAGENET_STD)])


def imagenet_test(size: int = 224) -> A.Compose:
    """Resize the shorter side to ``round(size * 256/224)``, crop the central ``size``×``size``, normalise."""
    return A.Compose([A.SmallestMaxSize(max_size=round(size * RESIZE_RATIO), interpolation=cv2.INTER_LINEAR),
                      A.CenterCrop(height=size, width=size), *to_tensor(IMAGENET_MEAN, IMAGENET_STD)])
