"""The custom ResNet of notebook 14 (the seed's S9 network, after David Page's DavidNet).

    Prep    Conv 3×3, 64 → BN → ReLU                                   32×32
    Layer1  X = Conv 3×3, 128 → MaxPool 2 → BN → ReLU                  16×16
            R1 = ResBlock(X): (Conv 3×3 → BN → ReLU) × 2, 128;  out = X + R1
    Layer2  Conv 3×3, 256 → MaxPool 2 → BN → ReLU                      8×8
    Layer3  X = Conv 3×3, 512 → MaxPool 2 → BN → ReLU                  4×4
            R3 = ResBlock(X), 512;  out = X + R3
    MaxPool 4 (4×4 → 1×1) → FC 512 → 10 → log_softmax

6,573,130 trainable parameters. Convolutions carry no bias (the BN after each makes one useless).
Only two residual blocks and three downsamplings: it is shallow and wide, which is why it trains fast.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3×3 convolution (padding 1, no bias), optionally a 2×2 max-pool, then BN and ReLU."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), nn.ReLU())


class ResBlock(nn.Module):
    """Two conv-BN-ReLU layers whose output is added to the block's input (same shape in and out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class CustomResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.prep = conv_bn_relu(3, 64)
        self.layer1 = nn.Sequential(conv_bn_relu(64, 128, pool=True), ResBlock(128))
        self.layer2 = conv_bn_relu(128, 256, pool=True)
        self.layer3 = nn.Sequential(conv_bn_relu(256, 512, pool=True), ResBlock(512))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return F.log_softmax(self.fc(self.pool(x).flatten(1)), dim=1)
