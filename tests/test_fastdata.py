"""The on-device data path does what the albumentations pipelines do, reproducibly, one epoch = every image once.

The statistical tests use fixed seeds, so they are deterministic; their thresholds (chi-square
p-values, ±4 standard errors) are loose enough for any seed, tight enough to catch an off-by-one
in the offsets, a wrong flip rate or a misplaced cutout.
"""
import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import eva_utils as eva
from eva_utils import augment, fastdata
from eva_utils.augment import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
from eva_utils.data import ArrayDataset
from eva_utils.fastdata import Augment, DeviceDataset, DeviceLoader

FILL = np.array(fastdata.fill_pixels(CIFAR10_MEAN))  # (125, 123, 114)


def _pixels(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> np.ndarray:
    """Normalised B×C×H×W back to 0..255 pixels, B×H×W×C."""
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return ((x.float() * s + m) * 255).round().permute(0, 2, 3, 1).numpy().astype(np.int64)


def _random_images(n, shape=(32, 32, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("kind", ["cifar", "mnist"])
def test_normalisation_is_albumentations_normalize_to_1e5(kind):
    shape, mean, std, pipe = (((32, 32, 3), CIFAR10_MEAN, CIFAR10_STD, augment.cifar_test()) if kind == "cifar"
                              else ((28, 28), MNIST_MEAN, MNIST_STD, augment.mnist_test()))
    images = _random_images(40, shape)
    images[0] = 0
    images[1] = 255
    loader = DeviceLoader(images, np.zeros(40), batch_size=16, device="cpu", mean=mean, std=std, train=False)
    ours = torch.cat([x for x, _ in loader])
    ref = torch.stack([pipe(image=im)["image"] for im in images])
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_half_precision_and_channels_last_outputs():
    images = _random_images(8)
    ref = torch.cat([x for x, _ in DeviceLoader(images, np.zeros(8), 8, "cpu", CIFAR10_MEAN, CIFAR10_STD, train=False)])
    loader = DeviceLoader(images, np.zeros(8), 8, "cpu", CIFAR10_MEAN, CIFAR10_STD, train=False,
                          dtype=torch.bfloat16, channels_last=True)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x.float(), ref, atol=0.02)  # bf16 keeps ~3 significant digits
    x, _ = next(iter(DeviceLoader(images, np.zeros(8), 8, "cpu", CIFAR10_MEAN, CIFAR10_STD, train=False)))
    assert x.is_contiguous()  # plain NCHW unless asked


# --------------------------------------------------------------------------- the operations themselves


def _numpy_reference(image, pad, mode, dy, dx, flip, cut, size):
    """Pad, crop, flip, cut out, the slow obvious way."""
    if mode == "reflect":
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    else:
        padded = np.stack([np.pad(image[..., c], pad, constant_values=FILL[c]) for c in range(3)], -1)
    out = padded[dy:dy + 32, dx:dx + 32]
    if flip:
        out = out[:, ::-1]
    out = out.copy()
    if size:
        out[cut[0]:cut[0] + size, cut[1]:cut[1] + size] = FILL
    return out


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_flip_cutout_equal_the_obvious_numpy_code(mode):
    images = _random_images(16, seed=1)
    aug = Augment(crop_pad=4, pad_mode=mode, flip=0.5, cutout=8)
    ds = DeviceDataset(images, np.arange(16), "cpu", CIFAR10_MEAN, CIFAR10_STD, aug, seed=5)
    idx = torch.arange(16).flip(0)
    g = torch.Generator().manual_seed(11)
    p = fastdata.sample_params(16, aug, (32, 32), g, "cpu")
    ds.generator.manual_seed(11)  # batch() draws the same parameters
    x, y = ds.batch(idx)
    assert torch.equal(y, idx)
    got = _pixels(x)
    for b, i in enumerate(idx.tolist()):
        ref = _numpy_reference(images[i], 4, mode, p.dy[b].item(), p.dx[b].item(), p.flip[b].item(),
                               (p.cut_y[b].item(), p.cut_x[b].item()), 8)
        assert np.array_equal(got[b], ref), f"image {b}"


# --------------------------------------------------------------------------- statistics vs albumentations


def _coded_image():
    """Each pixel says where it came from: R = 130 + row, G = 130 + column, B = 200 (none equals the fill)."""
    rows, cols = np.mgrid[0:32, 0:32]
    return np.stack([130 + rows, 130 + cols, np.full((32, 32), 200)], -1).astype(np.uint8)


def _constant(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per image: the value of ``values`` on the pixels ``where``, or -1 if it is not the same on all of them."""
    lo = np.where(where, values, 10**6).min((1, 2))
    hi = np.where(where, values, -10**6).max((1, 2))
    return np.where(lo == hi, lo, -1)


def _decode(out: np.ndarray, pad: int):
    """From augmented coded images (N×32×32×3): crop offsets, flips, and the cutout holes.

    Checks on the way that each image is an exact shifted (mirrored) copy whose border is the mean
    colour; the hole is what is neither image nor border.
    """
    i, j = np.mgrid[0:32, 0:32]
    image = out[..., 2] == 200
    r, c = out[..., 0] - 130, out[..., 1] - 130
    dy = _constant(r - i + pad, image)
    plain, mirrored = _constant(c - j + pad, image), _constant(c + j - 31 + pad, image)
    assert (dy >= 0).all() and ((plain >= 0) != (mirrored >= 0)).all(), "not a shifted (mirrored) copy"
    flip = mirrored >= 0
    dx = np.where(flip, mirrored, plain)
    src_r = dy[:, None, None] + i - pad
    src_c = dx[:, None, None] + np.where(flip[:, None, None], 31 - j, j) - pad
    border = (src_r < 0) | (src_r > 31) | (src_c < 0) | (src_c > 31)
    assert (out[border] == FILL).all(), "the border is not the mean colour"
    return dy, dx, flip, ~image & ~border


@functools.lru_cache(maxsize=None)
def _augmented(source: str, n: int, pad: int, seed: int = 0) -> np.ndarray:
    """``n`` augmentations of the coded image by our loader or by ``augment.cifar_train``."""
    if source == "ours":
        images = np.repeat(_coded_image()[None], n, 0)
        loader = DeviceLoader(images, np.zeros(n), batch_size=500, device="cpu", mean=CIFAR10_MEAN,
                              std=CIFAR10_STD, crop_pad=pad, flip=True, cutout=8, seed=seed)
        return np.concatenate([_pixels(x) for x, _ in loader])
    pipe = augment.cifar_train(pad=pad)
    pipe.set_random_seed(seed)
    image = _coded_image()
    return _pixels(torch.stack([pipe(image=image)["image"] for _ in range(n)]))


def _uniform_p(values, k):
    """p-value of a chi-square test that ``values`` are uniform over 0..k-1."""
    counts = np.bincount(values, minlength=k)
    assert len(counts) == k, f"values outside 0..{k - 1}"
    return stats.chisquare(counts).pvalue


def _one_rectangle(holes):
    """Rows and columns touched by each hole; asserts each hole is one filled rectangle of at most 8×8."""
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert ((rows > 0) & (rows <= 8) & (cols > 0) & (cols <= 8)).all()
    assert (holes.sum((1, 2)) == rows * cols).all()
    return rows, cols


def _p_hole_fully_visible(pad=4, size=32, hole=8):
    """Exact probability that the 8×8 hole misses the border, over the 9 crop offsets and 25 hole positions per axis."""
    inside = [max(0, pad - d) <= c and c + hole <= size - max(0, d - pad)
              for d in range(2 * pad + 1) for c in range(size - hole + 1)]
    return np.mean(inside) ** 2  # rows and columns are independent


@pytest.mark.parametrize("source", ["ours", "albumentations"])
def test_crop_flip_cutout_statistics(source):
    """Both pipelines: 81 crop positions equally likely, flips half the time, one 8×8 hole, possibly clipped by the border."""
    n = 1500
    dy, dx, flip, holes = _decode(_augmented(source, n, 4), 4)
    assert _uniform_p(dy * 9 + dx, 81) > 1e-3
    assert abs(flip.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    _one_rectangle(holes)
    p = _p_hole_fully_visible()  # about 0.76
    assert abs((holes.sum((1, 2)) == 64).mean() - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("source", ["ours", "albumentations"])
def test_cutout_position_is_uniform_inside_the_image(source):
    *_, holes = _decode(_augmented(source, 1500, 0), 0)
    _one_rectangle(holes)
    assert (holes.sum((1, 2)) == 64).all()  # never clipped: albumentations 2.x keeps the hole inside the image
    tops, lefts = holes.any(2).argmax(1), holes.any(1).argmax(1)
    assert _uniform_p(tops, 25) > 1e-3 and _uniform_p(lefts, 25) > 1e-3


def test_hole_size_distribution_matches_albumentations():
    ours = _decode(_augmented("ours", 1500, 4, seed=1), 4)[3].sum((1, 2))
    ref = _decode(_augmented("albumentations", 1500, 4), 4)[3].sum((1, 2))
    assert stats.ks_2samp(ours, ref, method="asymp").pvalue > 1e-3


# --------------------------------------------------------------------------- MNIST rotation


def test_rotation_equals_albumentations_rotate_at_the_same_angle():
    import albumentations as A
    import cv2

    image = _random_images(1, (28, 28), seed=3)[0]
    image[:, :3] = 0
    for angle in (7.0, -5.5, 30.0):
        ref = A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)(image=image)["image"]
        ours = fastdata.rotate(torch.from_numpy(image).float()[None, None], torch.tensor([angle]))[0, 0]
        # OpenCV rounds its result to uint8; the rest is the same bilinear interpolation
        assert np.abs(ours.numpy() - ref).max() <= 0.5 + 1e-3, angle


def test_rotation_grid_is_affine_grid():
    """``fastdata.rotate`` writes ``F.affine_grid`` out by hand: same sampling positions, non-square images too."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 2, 28, 20, generator=g) * 255
    degrees = torch.rand(6, generator=g) * 60 - 30
    t = torch.deg2rad(degrees)
    cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros(6)
    theta = torch.stack([torch.stack([cos, -sin * 28 / 20, zero], 1),
                         torch.stack([sin * 20 / 28, cos, zero], 1)], 1)
    ref = F.grid_sample(x, F.affine_grid(theta, (6, 2, 28, 20), align_corners=False), align_corners=False)
    assert torch.allclose(fastdata.rotate(x, degrees), ref, atol=1e-2)


def test_rotation_angles_uniform_within_the_limit():
    g = torch.Generator().manual_seed(0)
    angles = fastdata.sample_params(20000, Augment(rotate=7.0), (28, 28), g, "cpu").angle
    assert -7 <= angles.min() and angles.max() <= 7
    assert stats.kstest(angles.numpy(), stats.uniform(loc=-7, scale=14).cdf).pvalue > 1e-3


def test_mnist_loader_rotates_within_7_degrees():
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 13:15] = 255  # a vertical bar
    images = np.repeat(image[None], 64, 0)
    loader = DeviceLoader(images, np.zeros(64), 64, "cpu", MNIST_MEAN, MNIST_STD, crop_pad=0, flip=False, cutout=0,
                          rotate=7.0, seed=0)
    x, _ = next(iter(loader))
    plain = (torch.from_numpy(image).float() / 255 - MNIST_MEAN[0]) / MNIST_STD[0]
    assert sum(not torch.allclose(r[0], plain, atol=1e-4) for r in x) >= 60
    background = -MNIST_MEAN[0] / MNIST_STD[0]
    assert torch.allclose(x[:, 0, :, :10], torch.full_like(x[:, 0, :, :10], background), atol=1e-4)


# --------------------------------------------------------------------------- epochs and seeds


def _loader(seed, n=1000, batch_size=64, drop_last=False):
    return DeviceLoader(_random_images(n, seed=2), np.arange(n), batch_size, "cpu", CIFAR10_MEAN, CIFAR10_STD,
                        seed=seed, drop_last=drop_last)


def test_every_image_once_per_epoch():
    loader = _loader(0)
    assert len(loader) == math.ceil(1000 / 64)
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    for labels in epochs:
        assert torch.equal(labels.sort().values, torch.arange(1000))
    assert not torch.equal(epochs[0], epochs[1])  # a new order every epoch
    dropped = _loader(0, drop_last=True)
    labels = torch.cat([y for _, y in dropped])
    assert len(dropped) == 1000 // 64 and len(labels) == 1000 // 64 * 64 and len(labels.unique()) == len(labels)


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = (list(_loader(s, n=200)) for s in (3, 3, 4))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    loader = _loader(3, n=200)
    list(loader)
    loader.dataset.reseed(3)  # restarting the stream replays the first epoch
    assert all(torch.equal(x, xa) for (x, _), (xa, _) in zip(loader, a))


def test_plugs_into_fit_reproducibly(monkeypatch):
    """eva.fit reseeds loader.dataset every epoch: same seed -> same training, bit for bit on the CPU."""
    monkeypatch.setenv("EVA_MODE", "full")  # two epochs (a smoke run trains one)
    rng = np.random.default_rng(0)
    train = ArrayDataset(rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 96), name="t")
    test = ArrayDataset(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 32), name="v")

    def once():
        eva.seed_everything(0)
        train_loader, test_loader = fastdata.loaders(train, test, 32, "cpu", preset="cifar10")
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(), torch.nn.LazyLinear(10))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        history = eva.fit(model, train_loader, test_loader, opt, epochs=2, device="cpu", verbose=False,
                          checkpoint=None)
        return history, train_loader.dataset._seed

    (h1, s1), (h2, s2) = once(), once()
    assert h1.train_loss == h2.train_loss and h1.test_acc == h2.test_acc
    assert s1 == s2 and len(h1.train_loss) == 2


def test_dataset_indexing_and_bad_inputs():
    ds = DeviceDataset(_random_images(4), np.arange(4), "cpu", CIFAR10_MEAN, CIFAR10_STD, seed=0)
    x, y = ds[2]
    assert x.shape == (3, 32, 32) and y == 2
    with pytest.raises(ValueError, match="mean and std"):
        DeviceLoader(_random_images(4), np.arange(4), 2, "cpu")
    with pytest.raises(ValueError, match="uint8"):
        DeviceDataset(np.zeros((4, 32, 32, 3), np.float32), np.arange(4), "cpu", CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match="3-channel"):
        DeviceDataset(_random_images(4), np.arange(4), "cpu", MNIST_MEAN, MNIST_STD)
