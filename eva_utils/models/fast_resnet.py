"""DavidNet — notebook 14's custom ResNet — with one switch per trick of notebook 15.

With every switch off (``FastResNet(out_scale=1.0, fc_bias=True)``) it *is* ``CustomResNet``:
same layers, same parameter names, same 6,573,130 parameters, so a ``CustomResNet`` state dict
loads into it. Page's DavidNet differs in two details, the defaults here: the classifier has no
bias and its logits are multiplied by 1/8 (``out_scale=0.125``, so the initial predictions are
nearly uniform) — 6,573,120 parameters.

The switches:

* ``act="celu"``: CELU(α) instead of ReLU — ``x`` for x > 0, ``α·(exp(x/α) − 1)`` below: a ReLU with
  a rounded corner, whose gradient does not jump;
* ``ghost_batch=32``: ``tricks.GhostBatchNorm`` instead of ``nn.BatchNorm2d``;
* ``whitening=filters``: the prep layer becomes a frozen whitening convolution (27 filters for
  3×3 patches, ``tricks.patch_whitening``) followed by a trainable 1×1 convolution to 64 channels
  (the same 1,728 weights as the 3×3 convolution it replaces);
* ``width``: channels of the prep layer (64); the others follow (×2, ×4, ×8). Smoke runs use a
  narrow net so that the CPU can run every row of the notebook in seconds.

Frozen BN scales are not a switch of the architecture: ``tricks.freeze_bn_scales(model)``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from ..tricks import GhostBatchNorm, whitening_conv


def conv_norm_act(c_in: int, c_out: int, norm, act, pool: bool = False, kernel: int = 3) -> nn.Sequential:
    """Convolution (no bias), optionally a 2×2 max-pool, then normalisation and activation.

    The same layout as ``resnet.conv_bn_relu`` (so the parameter names match), with the
    normalisation and activation layers chosen by the caller.
    """
    layers = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, norm(c_out), act())


class Residual(nn.Module):
    """``x + body(x)`` with two conv-norm-act layers (``resnet.ResBlock``, generalised)."""

    def __init__(self, channels: int, norm, act):
        super().__init__()
        self.body = nn.Sequential(conv_norm_act(channels, channels, norm, act),
                                  conv_norm_act(channels, channels, norm, act))

    def forward(self, x):
        return x + self.body(x)


class FastResNet(nn.Module):
    """DavidNet with switches (see the module docstring). Returns raw logits (times ``out_scale``)."""

    def __init__(self, num_classes: int = 10, width: int = 64, act: str = "relu", celu_alpha: float = 0.075,
                 ghost_batch: int = 0, whitening: torch.Tensor | None = None, out_scale: float = 0.125,
                 fc_bias: bool = False):
        super().__init__()
        if act not in ("relu", "celu"):
            raise ValueError(f"act must be 'relu' or 'celu', not {act!r}")
        norm = partial(GhostBatchNorm, ghost_batch=ghost_batch) if ghost_batch else nn.BatchNorm2d
        activation = partial(nn.CELU, alpha=celu_alpha) if act == "celu" else nn.ReLU
        c = width
        if whitening is None:
            self.prep = conv_norm_act(3, c, norm, activation)
        else:
            self.prep = nn.Sequential(whitening_conv(whitening),
                                      conv_norm_act(whitening.shape[0], c, norm, activation, kernel=1))
        self.layer1 = nn.Sequential(conv_norm_act(c, 2 * c, norm, activation, pool=True),
                                    Residual(2 * c, norm, activation))
        self.layer2 = conv_norm_act(2 * c, 4 * c, norm, activation, pool=True)
        self.layer3 = nn.Sequential(conv_norm_act(4 * c, 8 * c, norm, activation, pool=True),
                                    Residual(8 * c, norm, activation))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * c, num_classes, bias=fc_bias)
        self.out_scale = out_scale

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.pool(x).flatten(1)) * self.out_scale

    def extra_repr(self) -> str:
        return f"out_scale={self.out_scale}"
