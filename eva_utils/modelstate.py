"""What a helper that runs someone's model must leave as it found it: the device it is on and each module's mode.

Looking at a model (a summary, a cost count, predictions, Grad-CAM, an LR range test, a receptive-field probe)
must not change it: a forward pass in train mode would update BatchNorm's running statistics and make Dropout
random, so helpers switch to eval mode and switch every module back afterwards -- to *its own* flag, since a
model may be partly frozen (e.g. ``transfer.freeze_backbone`` keeps the backbone's BatchNorm in eval mode).
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import torch
from torch import nn


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (or buffer); the CPU if it has none."""
    if device is not None:
        return torch.device(device)
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def modes_restored(model: nn.Module, train: bool | None = None) -> Iterator[nn.Module]:
    """Inside: the model in train (``True``) or eval (``False``) mode, or as it is (``None``); on exit, every
    module's own training flag back, even after an exception.

    An exported program (``torch.export``) cannot switch modes and stays in the one it was exported in (eval).
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        if train is not None:
            try:
                model.train(train)
            except NotImplementedError:  # torch.export's module: frozen in its exported (eval) mode
                pass
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
