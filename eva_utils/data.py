"""Datasets and loaders: MNIST, CIFAR-10, CIFAR-100.

Each dataset is held as a uint8 image array plus integer labels (``ArrayDataset``), and
an albumentations pipeline (see ``augment.py``) turns one image into a normalised tensor.

Where the data comes from, in order:

1. an offline copy under ``$EVA_DATA_DIR`` (default ``./data``):
   ``MNIST/raw/*.gz`` (torchvision's own four files), ``cifar10/cifar10.npz``,
   ``cifar100/cifar100.npz`` (keys ``x_train, y_train, x_test, y_test, classes``);
2. otherwise torchvision's ``download=True`` (what happens on Colab).

With neither, you get one ``DataNotFoundError`` naming ``EVA_DATA_DIR`` and the files
looked for. In smoke mode each split is cut to a small, fixed, class-balanced subset of the
*real* data. Only CIFAR-100, which cannot exist on an offline machine, may fall back to a
synthetic stand-in in smoke mode, and it says so loudly.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import config

#: Images per class in the smoke subsets (train, test). CIFAR-100's nets (notebooks 12, 13) are the costliest.
SMOKE_PER_CLASS = {"mnist": (40, 20), "cifar10": (20, 10), "cifar100": (2, 1)}

MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class DataNotFoundError(RuntimeError):
    """The dataset is neither on disk nor downloadable. The message says where we looked."""


class ArrayDataset(Dataset):
    """Images (uint8, ``N×H×W`` or ``N×H×W×C``) and labels, with an albumentations transform.

    Random augmentation is reproducible: before each epoch the training loop calls
    ``reseed(s)`` with a number drawn from PyTorch's (seeded, checkpointed) random
    generator, which reseeds the albumentations pipeline (each DataLoader worker adds its
    id, see ``loaders``). So the same seed gives the same augmented batches, and a resumed
    run sees exactly the batches an uninterrupted one would have.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None, classes=None, name: str = ""):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.classes = tuple(classes) if classes is not None else None
        self.name = name
        self.reseed(int(torch.randint(0, 2**31 - 1, (1,)).item()))

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream from ``seed``."""
        self._seed = int(seed) % 2**32
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(self._seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image, label = self.images[i], int(self.labels[i])
        if self.transform is None:
            tensor = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255)
            tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
            return tensor, label
        return self.transform(image=image)["image"], label

    def with_transform(self, transform) -> "ArrayDataset":
        """The same images with another transform (shares the arrays, copies nothing)."""
        copy = ArrayDataset(self.images, self.labels, transform, self.classes, self.name)
        copy.reseed(self._seed)
        return copy

    def sample(self, n: int, seed: int = 0) -> "ArrayDataset":
        """A fixed random sample of ``n`` images (in dataset order), e.g. a notebook's extra-small smoke set."""
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        copy = ArrayDataset(self.images[keep], self.labels[keep], self.transform, self.classes,
                            name=f"{self.name} ({len(keep)} sampled)")
        copy.reseed(self._seed)
        return copy

    def split(self, n: int) -> tuple["ArrayDataset", "ArrayDataset"]:
        """(all images but the last ``n``, the last ``n``): a fixed validation split carved from a training set.

        Design decisions are taken on the held-out part; the test set is kept for the final report. The split
        is by position, so it is the same for every seed and every run. A set with no more than ``n`` images
        (a smoke subset) keeps its last sixth for validation.
        """
        n = n if n < len(self) else len(self) // 6
        parts = []
        for keep, part in ((slice(0, len(self) - n), "train"), (slice(len(self) - n, None), "validation")):
            ds = ArrayDataset(self.images[keep], self.labels[keep], self.transform, self.classes,
                              name=f"{self.name} ({part} part)")
            ds.reseed(self._seed)
            parts.append(ds)
        return parts[0], parts[1]

    def __repr__(self) -> str:
        shape = "×".join(str(s) for s in self.images.shape[1:])
        return f"{self.name or 'ArrayDataset'}: {len(self)} images of {shape}, {len(np.unique(self.labels))} classes"


def stratified_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of every class, in dataset order (fixed, balanced)."""
    labels = np.asarray(labels)
    picks = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def _smoke(smoke) -> bool:
    """``None`` follows the run mode; ``True``/``False`` force it."""
    return config.is_smoke() if smoke is None else bool(smoke)


def _finish(name, images, labels, classes, train, transform, smoke):
    if _smoke(smoke):
        keep = stratified_subset(labels, SMOKE_PER_CLASS[name][0 if train else 1])
        images, labels = images[keep], np.asarray(labels)[keep]
    split = "train" if train else "test"
    return ArrayDataset(images, labels, transform, classes, name=f"{name} {split}")


def _reason(err: Exception) -> str:
    """The first line of an exception, short enough to read."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:120]}"


# --------------------------------------------------------------------------- MNIST
def _writable_mnist_root(root: Path) -> Path:
    """torchvision extracts MNIST next to the .gz files; copy them somewhere writable if needed."""
    raw = root / "MNIST" / "raw"
    extracted = all((raw / f[:-3]).exists() for f in MNIST_FILES)
    if extracted or not raw.is_dir() or os.access(raw, os.W_OK):
        return root
    cache = Path(os.environ.get("EVA_CACHE_DIR") or Path.home() / ".cache" / "eva_utils")
    target = cache / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for f in MNIST_FILES:
        if (raw / f).exists() and not (target / f).exists():
            shutil.copy2(raw / f, target / f)
    print(f"{raw} is read-only: extracting MNIST in {target} instead")
    return cache


def mnist(train: bool = True, transform=None, smoke=None) -> ArrayDataset:
    """MNIST as an ``ArrayDataset`` (28×28 uint8 digits).

    Reads ``$EVA_DATA_DIR/MNIST/raw/*.gz`` through torchvision, which checks their MD5
    and extracts them without network; downloads them where there is a network.
    ``smoke``: ``None`` follows the run mode, ``True``/``False`` force it.
    """
    from torchvision import datasets

    root = _writable_mnist_root(config.data_dir())
    try:
        with config.exclusive(root / "MNIST" / ".extract.lock"):  # a sweep's runs start together: one extracts
            ds = datasets.MNIST(str(root), train=train, download=True)
    except Exception as err:  # offline with no copy: one clear message, not a traceback soup
        looked = ", ".join(config.shown_path(root / "MNIST" / "raw" / f) for f in MNIST_FILES)
        raise DataNotFoundError(
            f"MNIST is not available. Looked for {looked}{_unset()} "
            f"and the download failed ({_reason(err)}). "
            "Set EVA_DATA_DIR to a folder containing MNIST/raw/*.gz, or run with internet access."
        ) from None
    return _finish("mnist", ds.data.numpy(), ds.targets.numpy(), MNIST_CLASSES, train, transform, smoke)


def _unset() -> str:
    return "" if os.environ.get("EVA_DATA_DIR") else " (EVA_DATA_DIR is not set)"


# --------------------------------------------------------------------------- CIFAR
@functools.lru_cache(maxsize=4)
def _load_npz(path: Path, train: bool):
    """Decompress one split once per process (CIFAR-10's train split alone is 150 MB)."""
    with np.load(path, allow_pickle=False) as z:
        x, y = (z["x_train"], z["y_train"]) if train else (z["x_test"], z["y_test"])
        classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else None
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images of shape N×32×32×3, got {x.dtype} {x.shape}")
    return x, np.asarray(y, dtype=np.int64), classes


def _cifar(name: str, tv_class: str, train: bool, transform, smoke):
    from torchvision import datasets

    root = config.data_dir()
    npz = root / name / f"{name}.npz"
    if npz.exists():
        x, y, classes = _load_npz(npz, train)
        return _finish(name, x, y, classes, train, transform, smoke)
    try:
        ds = getattr(datasets, tv_class)(str(root), train=train, download=True)
    except Exception as err:
        raise DataNotFoundError(
            f"{tv_class} is not available. Looked for {config.shown_path(npz)} and for torchvision's copy in "
            f"{config.shown_path(root)}{_unset()}; the download failed "
            f"({_reason(err)}). Set EVA_DATA_DIR to a folder containing {name}/{name}.npz, "
            "or run with internet access."
        ) from None
    return _finish(name, ds.data, np.asarray(ds.targets), tuple(ds.classes), train, transform, smoke)


def cifar10(train: bool = True, transform=None, smoke=None) -> ArrayDataset:
    """CIFAR-10 (32×32×3 uint8): ``$EVA_DATA_DIR/cifar10/cifar10.npz`` or torchvision's download."""
    return _cifar("cifar10", "CIFAR10", train, transform, smoke)


@dataclass
class _StandIn:
    images: np.ndarray
    labels: np.ndarray


def synthetic_cifar100(train: bool, per_class: int) -> _StandIn:
    """A deterministic stand-in with CIFAR-100's shapes: each class a colour and stripe pattern plus noise.

    It is learnable (so a smoke run can show the loss falling) but it is NOT CIFAR-100.
    """
    rng = np.random.default_rng(100 + int(train))
    classes = np.repeat(np.arange(100), per_class)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((len(classes), 32, 32, 3), dtype=np.uint8)
    for n, c in enumerate(classes):
        colour = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256], dtype=np.float32)
        stripes = ((xx * (1 + c % 5) + yy * (c // 20)) % 8 < 4)[..., None] * 60.0
        noise = rng.normal(0, 20, size=(32, 32, 3))
        images[n] = np.clip(colour * 0.6 + stripes + noise, 0, 255).astype(np.uint8)
    return _StandIn(images, classes.astype(np.int64))


def cifar100(train: bool = True, transform=None, smoke=None) -> ArrayDataset:
    """CIFAR-100 (32×32×3 uint8, 100 classes): ``$EVA_DATA_DIR/cifar100/cifar100.npz`` or torchvision's download.

    In smoke mode only, when neither exists, a synthetic stand-in is used and announced.
    """
    try:
        return _cifar("cifar100", "CIFAR100", train, transform, smoke)
    except DataNotFoundError as err:
        if not _smoke(smoke):
            raise
        print(f"NOTE: {err}\nSMOKE MODE: using a synthetic stand-in with CIFAR-100's shapes. "
              "It is NOT CIFAR-100 and its numbers mean nothing.")
        per_class = SMOKE_PER_CLASS["cifar100"][0 if train else 1]
        fake = synthetic_cifar100(train, per_class)
        classes = tuple(f"class_{i:02d}" for i in range(100))
        return ArrayDataset(fake.images, fake.labels, transform, classes,
                            name=f"cifar100 STAND-IN {'train' if train else 'test'}")


# --------------------------------------------------------------------------- loaders
def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream (else all workers would repeat one)."""
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset, "reseed"):
        dataset.reseed(dataset._seed + 7919 * (worker_id + 1))


def loaders(train_set: Dataset, test_set: Dataset, batch_size: int, device=None, test_batch_size=None):
    """Train loader (shuffled, last partial batch kept) and test loader, with device-appropriate settings.

    Shuffling draws from PyTorch's global random generator, so ``seed_everything`` fixes the order.
    """
    device = device or config.get_device()
    settings = config.loader_settings(device)
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, worker_init_fn=_seed_worker, **settings)
    test = DataLoader(test_set, batch_size=test_batch_size or config.eval_batch_size(device, batch_size),
                      shuffle=False, **settings)
    return train, test
