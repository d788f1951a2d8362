"""Networks shared by several notebooks (the model under study in a single notebook lives in that notebook)."""
from .fast_resnet import FastResNet
from .resnet import CustomResNet, ResBlock, conv_bn_relu

__all__ = ["CustomResNet", "FastResNet", "ResBlock", "conv_bn_relu"]
