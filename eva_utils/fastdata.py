"""The fast data path: the whole dataset lives on the device, and each batch is augmented there.

The usual pipeline (``eva.loaders`` + an albumentations transform) prepares every image one at a
time on the CPU: NumPy padding, cropping, flipping, then a Python-level collate into a batch,
then a copy to the GPU. On a GPU that trains DavidNet in ~10 ms a batch, the CPU cannot keep up
and the GPU waits. Page (*How to train your ResNet*) moved all of it onto the GPU:

1. the training set goes to the device **once**, as uint8 (CIFAR-10: 50,000 × 40 × 40 × 3 bytes
   = 240 MB once padded, a quarter of what float32 would take);
2. a batch is cut out of it with **one gather**: the random crop offsets and the flips of all
   images of the batch become one tensor of source-pixel indices;
3. cutout is one ``torch.where`` with a per-image square mask, MNIST's rotation one
   ``F.affine_grid`` + ``F.grid_sample`` with a per-image angle;
4. normalisation is one multiply-add per batch, to float32 or straight to half precision.

No DataLoader workers, no per-image Python: a handful of kernels per batch. It also runs on the
CPU (that is how it is tested), where it still saves the per-image work.

The augmentations reproduce ``augment.cifar_train`` / ``augment.mnist_train`` *statistically*
(same distributions of crop offsets, flips, cutout positions and angles; the tests check it
against the albumentations pipeline itself), not sample for sample: the random numbers come
from a ``torch.Generator`` on the device, not from albumentations' generator.

    train_loader, test_loader = eva.fastdata.loaders(train_set, test_set, 512, device, preset="cifar10")
    history = eva.fit(model, train_loader, test_loader, optimizer, epochs)   # plugs into fit as is

Reproducibility follows ``data.ArrayDataset``: ``eva.fit`` calls ``loader.dataset.reseed(s)``
before each epoch, which restarts the generator that draws the shuffling and the augmentation,
so the same seed gives the same batches (bit for bit on the CPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import augment as _aug
from . import config
from .augment import fill_pixels  # the padding and cutout colour, as in the albumentations pipelines

# --------------------------------------------------------------------------- augmentation settings


@dataclass(frozen=True)
class Augment:
    """What to do to each training image (``None`` instead of an ``Augment`` means: nothing).

    crop_pad: pad each side by this many pixels, then crop back to the original size at a random
        offset in ``[0, 2·crop_pad]`` on each axis (a shift of up to ``crop_pad`` pixels).
    pad_mode: ``"constant"`` fills the border with the dataset mean (like ``augment.cifar_train``),
        ``"reflect"`` mirrors the image into it (what Page's cifar10-fast does).
    flip: probability of a horizontal flip.
    cutout: side of one square, placed uniformly *inside* the image and filled with the mean
        (albumentations 2.x ``CoarseDropout`` never lets the hole cross the border). 0: none.
    rotate: a random angle in ``[-rotate°, +rotate°]``, uncovered corners become 0 (MNIST's background).
    """

    crop_pad: int = 0
    pad_mode: str = "constant"
    flip: float = 0.0
    cutout: int = 0
    rotate: float = 0.0

    def __post_init__(self):
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', not {self.pad_mode!r}")
        if not 0.0 <= float(self.flip) <= 1.0:
            raise ValueError(f"flip is a probability, got {self.flip}")


#: Mean/std and training augmentation of each dataset, matching ``augment.py``'s pipelines.
PRESETS = {
    "cifar10": (_aug.CIFAR10_MEAN, _aug.CIFAR10_STD, Augment(crop_pad=4, flip=0.5, cutout=8)),
    "cifar100": (_aug.CIFAR100_MEAN, _aug.CIFAR100_STD, Augment(crop_pad=4, flip=0.5, cutout=8)),
    "mnist": (_aug.MNIST_MEAN, _aug.MNIST_STD, Augment(rotate=7.0)),
}


@dataclass
class AugParams:
    """The random choices for one batch, one entry per image (all tensors on the device)."""

    dy: torch.Tensor      # crop offset, rows, in [0, 2·pad]
    dx: torch.Tensor      # crop offset, columns
    flip: torch.Tensor    # bool
    cut_y: torch.Tensor   # top-left corner of the cutout square
    cut_x: torch.Tensor
    angle: torch.Tensor   # degrees


def sample_params(n: int, aug: Augment, size: tuple, generator: torch.Generator, device) -> AugParams:
    """Draw the augmentation choices of ``n`` images of ``size=(H, W)`` from ``generator``.

    Uniform integers via ``torch.randint(low, high)`` (``high`` excluded), so ``crop_pad=4`` gives the
    9 offsets 0..8, and a cutout of 8 in a 32-pixel image the 25 positions 0..24.
    """
    h, w = size
    kw = dict(generator=generator, device=device)
    zeros = torch.zeros(n, dtype=torch.long, device=device)
    span = 2 * aug.crop_pad + 1
    dy = torch.randint(0, span, (n,), **kw) if aug.crop_pad else zeros
    dx = torch.randint(0, span, (n,), **kw) if aug.crop_pad else zeros
    flip = torch.rand(n, **kw) < aug.flip if aug.flip else torch.zeros(n, dtype=torch.bool, device=device)
    cut_y = torch.randint(0, h - aug.cutout + 1, (n,), **kw) if aug.cutout else zeros
    cut_x = torch.randint(0, w - aug.cutout + 1, (n,), **kw) if aug.cutout else zeros
    angle = (torch.rand(n, **kw) * 2 - 1) * aug.rotate if aug.rotate else torch.zeros(n, device=device)
    return AugParams(dy, dx, flip, cut_y, cut_x, angle)


# --------------------------------------------------------------------------- the batched operations


def pad_images(images: torch.Tensor, pad: int, fill=(0,), mode: str = "constant") -> torch.Tensor:
    """Pad ``N×H×W×C`` images by ``pad`` pixels on each side, with the colour ``fill`` or by reflection.

    Done once for the whole dataset, so that a random crop is a plain gather afterwards.
    Reflection is index arithmetic (row -1 is row 1, row H is row H-2), which works for uint8 too.
    """
    if pad == 0:
        return images.contiguous()
    n, h, w, c = images.shape
    if mode == "reflect":
        rows = _reflect(torch.arange(-pad, h + pad, device=images.device), h)
        cols = _reflect(torch.arange(-pad, w + pad, device=images.device), w)
        return images[:, rows][:, :, cols].contiguous()
    out = images.new_empty((n, h + 2 * pad, w + 2 * pad, c))
    out[:] = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    out[:, pad:pad + h, pad:pad + w] = images
    return out


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices into [0, n): -1 -> 1, n -> n-2 (like np.pad(mode='reflect'))."""
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def crop_flip(padded: torch.Tensor, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              size: tuple) -> torch.Tensor:
    """Images ``idx`` of ``padded`` (``N×Hp×Wp×C``), cropped to ``size`` at ``(dy, dx)`` and mirrored where ``flip``.

    One gather: for output pixel (i, j) of image b the source pixel is row ``dy[b] + i`` and column
    ``dx[b] + j``, or ``dx[b] + W-1-j`` when flipped. The three indices become one linear index into
    the dataset seen as a ``(N·Hp·Wp)×C`` table of pixels.
    """
    _, hp, wp, c = padded.shape
    h, w = size
    ar_h = torch.arange(h, device=padded.device)
    ar_w = torch.arange(w, device=padded.device)
    rows = dy[:, None] + ar_h                                               # B×H
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)     # B×W
    pixel = (idx[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]  # B×H×W
    return padded.reshape(-1, c).index_select(0, pixel.reshape(-1)).view(len(idx), h, w, c)


def cutout(x: torch.Tensor, cut_y: torch.Tensor, cut_x: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
    """Fill one ``size``×``size`` square per image of ``x`` (``B×C×H×W``), top-left at (cut_y, cut_x), with ``fill``."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device) - cut_y[:, None]               # B×H
    cols = torch.arange(w, device=x.device) - cut_x[:, None]               # B×W
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return torch.where(inside[:, None], fill.view(1, -1, 1, 1).to(x.dtype), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` (``B×C×H×W``) about its centre by its angle; outside pixels become 0.

    For every output pixel we compute where it comes from in the input — the output coordinates
    rotated by the image's angle — and ``F.grid_sample`` reads the input there with bilinear
    interpolation: the batched equivalent of albumentations' ``Rotate`` (OpenCV ``warpAffine``),
    positive angles counter-clockwise like it. ``grid_sample`` wants coordinates in [-1, 1] on both
    axes (pixel centres, ``align_corners=False``), so for a non-square image the rotation is
    corrected by the aspect ratio. (This is ``F.affine_grid`` with the rotation matrix, written out:
    the same numbers, several times faster on a CPU.)
    """
    b, _, h, w = x.shape
    t = torch.deg2rad(degrees.to(torch.float32))
    cos, sin = torch.cos(t).view(b, 1, 1), torch.sin(t).view(b, 1, 1)
    xs = ((torch.arange(w, device=x.device, dtype=torch.float32) * 2 + 1) / w - 1).view(1, 1, w)
    ys = ((torch.arange(h, device=x.device, dtype=torch.float32) * 2 + 1) / h - 1).view(1, h, 1)
    grid = torch.stack([cos * xs - sin * (h / w) * ys, sin * (w / h) * xs + cos * ys], dim=-1)   # B×H×W×2
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """``(x/255 - mean) / std`` per channel for ``B×C×H×W`` pixels in 0..255, like albumentations' ``Normalize``.

    Computed in float32 as ``(x - 255·mean) / (255·std)`` (albumentations' own formula), then cast.
    """
    c = x.shape[1]
    return ((x.float() - 255.0 * mean.view(1, c, 1, 1)) / (255.0 * std.view(1, c, 1, 1))).to(dtype)


# --------------------------------------------------------------------------- dataset and loader


def _as_nhwc(images) -> np.ndarray | torch.Tensor:
    """``N×H×W`` (grey) or ``N×H×W×C`` uint8 -> ``N×H×W×C``."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"expected uint8 images N×H×W or N×H×W×C, got {images.dtype} {tuple(images.shape)}")
    return images


class DeviceDataset:
    """A whole dataset held on ``device`` as uint8, augmented a batch at a time (see the module docstring).

    ``batch(indices)`` returns the normalised, augmented images ``B×C×H×W`` and their labels;
    ``dataset[i]`` one of them (so ``eva.show_samples`` works). ``reseed(seed)`` restarts the
    random stream, exactly like ``data.ArrayDataset.reseed``; ``seed=None`` draws the first seed
    from PyTorch's global generator, so ``eva.seed_everything`` fixes it.
    """

    def __init__(self, images, labels, device=None, mean=(0.0,), std=(1.0,), augment: Augment | None = None,
                 dtype=torch.float32, channels_last: bool = False, seed: int | None = None, classes=None,
                 name: str = ""):
        images = _as_nhwc(images)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device or config.get_device())
        c = images.shape[-1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"{c}-channel images need {c} means and stds, got {mean} and {std}")
        self.size = tuple(images.shape[1:3])
        self.augment = augment or Augment()
        if self.augment.cutout > min(self.size):
            raise ValueError(f"a cutout of {self.augment.cutout} does not fit in {self.size} images")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.fill = torch.tensor(fill_pixels(mean), dtype=torch.float32, device=self.device)
        on_device = torch.as_tensor(images).to(self.device)
        self.images = pad_images(on_device, self.augment.crop_pad, fill_pixels(mean), self.augment.pad_mode)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(self.device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.classes = tuple(classes) if classes is not None else None
        self.name = name
        self.generator = torch.Generator(device=self.device)
        self.reseed(int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed)

    def reseed(self, seed: int) -> None:
        """Restart the shuffling and augmentation stream from ``seed``."""
        self._seed = int(seed) % 2**63
        self.generator.manual_seed(self._seed)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` (a 1-D tensor on the device), augmented and normalised, and their labels."""
        aug, (h, w) = self.augment, self.size
        p = sample_params(len(idx), aug, self.size, self.generator, self.device)
        if aug.crop_pad or aug.flip:
            x = crop_flip(self.images, idx, p.dy, p.dx, p.flip, (h, w))
        else:
            x = self.images.index_select(0, idx)
        x = x.permute(0, 3, 1, 2)  # N×H×W×C memory seen as N×C×H×W: a channels_last tensor, no copy
        if aug.rotate:
            x = rotate(x, p.angle)
        if aug.cutout:
            x = cutout(x, p.cut_y, p.cut_x, aug.cutout, self.fill)
        x = normalise(x, self.mean, self.std, self.dtype)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt), self.labels[idx]

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([int(i)], device=self.device))
        return x[0], int(y[0])

    def __repr__(self) -> str:
        h, w = self.size
        return (f"{self.name or 'DeviceDataset'}: {len(self)} images of {h}×{w}×{self.images.shape[-1]} "
                f"on {self.device} (uint8), {self.augment}")


class DeviceLoader:
    """Batches of a ``DeviceDataset``: ``for x, y in loader`` gives normalised ``B×C×H×W`` images and labels.

    Built either from a ``DeviceDataset`` or, for convenience, from what ``DeviceDataset`` takes::

        DeviceLoader(train_set, batch_size=512, device="cuda", mean=CIFAR10_MEAN, std=CIFAR10_STD,
                     crop_pad=4, flip=True, cutout=8)       # train_set: an ArrayDataset (or uint8 array + labels)

    ``train=False`` switches the augmentation and the shuffling off (a test loader).
    Each epoch draws a random permutation of all images (``shuffle``) and cuts it into batches,
    so every image is seen exactly once; ``drop_last`` drops the final incomplete batch.
    ``len(loader)`` is the number of batches, ``loader.dataset`` the ``DeviceDataset`` (whose
    ``reseed`` ``eva.fit`` calls before every epoch).
    """

    def __init__(self, data, labels=None, batch_size: int = 512, device=None, mean=None, std=None,
                 train: bool = True, crop_pad: int = 4, flip=True, cutout: int = 8, rotate: float = 0.0,
                 pad_mode: str = "constant", shuffle: bool | None = None, drop_last: bool = False,
                 seed: int | None = None, dtype=torch.float32, channels_last: bool = False):
        if isinstance(data, DeviceDataset):
            self.dataset = data
        else:
            if labels is None:  # an ArrayDataset (or anything with .images and .labels)
                images, labels = data.images, data.labels
                classes, name = getattr(data, "classes", None), getattr(data, "name", "")
            else:
                images, classes, name = data, None, ""
            if mean is None or std is None:
                raise ValueError("DeviceLoader needs the dataset's mean and std (e.g. eva.augment.CIFAR10_MEAN)")
            flip = 0.5 if flip is True else float(flip or 0.0)
            aug = Augment(crop_pad, pad_mode, flip, cutout, rotate) if train else None
            self.dataset = DeviceDataset(images, labels, device, mean, std, aug, dtype, channels_last, seed,
                                         classes, name)
        self.batch_size = int(batch_size)
        self.shuffle = train if shuffle is None else bool(shuffle)
        self.drop_last = bool(drop_last)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        ds = self.dataset
        n = len(ds)
        order = (torch.randperm(n, generator=ds.generator, device=ds.device) if self.shuffle
                 else torch.arange(n, device=ds.device))
        for b in range(len(self)):
            yield ds.batch(order[b * self.batch_size:(b + 1) * self.batch_size])

    @property
    def device(self) -> torch.device:
        return self.dataset.device

    def __repr__(self) -> str:
        return (f"DeviceLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last})")


def loaders(train_set, test_set, batch_size: int, device=None, preset: str = "cifar10", test_batch_size=None,
            augment: Augment | None = None, drop_last: bool = False, dtype=torch.float32,
            channels_last: bool = False, seed: int | None = None):
    """Train and test ``DeviceLoader`` for two ``ArrayDataset``: the on-device twin of ``eva.loaders``.

    ``preset`` picks the mean/std and the augmentation of ``augment.py`` for that dataset
    (``"cifar10"``, ``"cifar100"``, ``"mnist"``); ``augment=Augment(...)`` overrides the augmentation
    (e.g. ``dataclasses.replace(PRESETS["cifar10"][2], pad_mode="reflect")``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    mean, std, default_aug = PRESETS[preset]
    device = torch.device(device or config.get_device())
    common = dict(device=device, mean=mean, std=std, dtype=dtype, channels_last=channels_last)
    train = DeviceLoader(DeviceDataset(train_set.images, train_set.labels, augment=augment or default_aug,
                                       seed=seed, classes=train_set.classes, name=train_set.name, **common),
                         batch_size=batch_size, shuffle=True, drop_last=drop_last)
    test = DeviceLoader(DeviceDataset(test_set.images, test_set.labels, augment=None, seed=0,
                                      classes=test_set.classes, name=test_set.name, **common),
                        batch_size=test_batch_size or config.eval_batch_size(device, batch_size), shuffle=False)
    return train, test


__all__ = ["Augment", "AugParams", "DeviceDataset", "DeviceLoader", "PRESETS", "crop_flip", "cutout", "fill_pixels",
           "loaders", "normalise", "pad_images", "rotate", "sample_params"]
