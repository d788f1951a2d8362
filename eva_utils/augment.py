"""Augmentation pipelines, built with albumentations (2.x).

A pipeline takes one uint8 image (H×W for MNIST, H×W×3 for CIFAR) and returns a
normalised float tensor C×H×W. Training pipelines add random changes that keep the label
true (a slightly rotated 7 is still a 7), so the network sees a different version of each
image every epoch and has to learn the shape rather than the pixels.

Beware: albumentations 2.x renamed many arguments (``fill`` not ``fill_value``,
``num_holes_range`` not ``max_holes``...). Old names only trigger a warning and the
defaults apply silently, so the tests check that each transform really does its job.
"""
from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

# Per-channel mean and standard deviation of the training sets (pixel values scaled to [0, 1]).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def to_tensor(mean, std) -> list:
    """The last steps of every pipeline: (x/255 - mean) / std per channel, then H×W×C -> C×H×W tensor."""
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


def fill_pixels(mean) -> tuple:
    """The [0, 1] channel means as 0..255 pixel values: the colour of padding and cutout, before normalisation."""
    return tuple(int(round(m * 255)) for m in mean)


def mnist_test(mean=MNIST_MEAN, std=MNIST_STD) -> A.Compose:
    """No augmentation: normalise only. Used for the test set, and for training before step 09."""
    return A.Compose(to_tensor(mean, std))


def mnist_train(rotate: float = 7.0, mean=MNIST_MEAN, std=MNIST_STD) -> A.Compose:
    """Random rotation in [-rotate°, +rotate°] (the uncovered corners become background), then normalise.

    ``rotate=0`` gives the plain pipeline.
    """
    steps = [A.Rotate(limit=(-rotate, rotate), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)] if rotate else []
    return A.Compose(steps + to_tensor(mean, std))


def cifar_test(mean=CIFAR10_MEAN, std=CIFAR10_STD) -> A.Compose:
    """Normalise only."""
    return A.Compose(to_tensor(mean, std))


def cifar_train(mean=CIFAR10_MEAN, std=CIFAR10_STD, pad: int = 4, size: int = 32, cutout: int = 8,
                flip: float = 0.5) -> A.Compose:
    """The custom-ResNet recipe: pad 4 + random 32×32 crop, horizontal flip, one cutout square, normalise.

    * pad + crop shifts the image by up to ``pad`` pixels each way (the border is the dataset mean);
    * a horizontal flip mirrors it with probability ``flip`` (a mirrored cat is a cat);
    * cutout hides one ``cutout``×``cutout`` square, filled with the dataset mean, so the net
      cannot rely on a single region. ``cutout=0`` leaves it out.
    """
    fill = fill_pixels(mean)
    steps = [
        A.PadIfNeeded(min_height=size + 2 * pad, min_width=size + 2 * pad,
                      border_mode=cv2.BORDER_CONSTANT, fill=fill),
        A.RandomCrop(height=size, width=size),
        A.HorizontalFlip(p=flip),
    ]
    if cutout:
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(cutout, cutout),
                                     hole_width_range=(cutout, cutout), fill=fill, p=1.0))
    return A.Compose(steps + to_tensor(mean, std))
