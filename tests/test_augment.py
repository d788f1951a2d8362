"""Each augmentation really acts (albumentations 2.x ignores misspelt arguments silently)."""
import numpy as np
import pytest
import torch

from eva_utils import augment
from eva_utils.augment import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD


def _run(pipeline, image, seed):
    pipeline.set_random_seed(seed)
    return pipeline(image=image)["image"]


def test_mnist_test_pipeline_normalises_exactly():
    image = np.full((28, 28), 255, dtype=np.uint8)
    image[0, 0] = 0
    out = augment.mnist_test()(image=image)["image"]
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32
    assert out[0, 1, 1].item() == pytest.approx((1 - MNIST_MEAN[0]) / MNIST_STD[0], rel=1e-5)
    assert out[0, 0, 0].item() == pytest.approx(-MNIST_MEAN[0] / MNIST_STD[0], rel=1e-5)


def test_rotation_changes_pixels_within_the_limit():
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 13:15] = 255  # a vertical bar: rotation tilts it
    plain = augment.mnist_test()(image=image)["image"]
    rotated = [_run(augment.mnist_train(rotate=7), image, s) for s in range(20)]
    changed = [not torch.equal(r, plain) for r in rotated]
    assert sum(changed) >= 18  # an angle of exactly 0 is possible but rare
    # Within ±7°: the bar's end moves sideways by at most 10·tan(7°) ≈ 1.2 px, so column 10 (3 px away) stays dark.
    background = (0 - MNIST_MEAN[0]) / MNIST_STD[0]
    for r in rotated:
        assert torch.allclose(r[0, :, :10], torch.full((28, 10), background), atol=1e-4)
    # a 30° limit moves the ends much further: far columns light up for some seed
    wide = [_run(augment.mnist_train(rotate=30), image, s) for s in range(20)]
    assert any((w[0, :, :10] > background + 0.5).any() for w in wide)


def test_rotation_zero_means_no_rotation():
    image = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    assert torch.equal(augment.mnist_train(rotate=0)(image=image)["image"], augment.mnist_test()(image=image)["image"])


def _cifar_raw(pipeline_kwargs, image, seed):
    """Undo the normalisation to compare in pixel units."""
    out = _run(augment.cifar_train(**pipeline_kwargs), image, seed)
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    return ((out * std + mean) * 255).round().permute(1, 2, 0).numpy()


def test_cifar_cutout_is_one_8x8_square_of_the_mean():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    fill = np.array([round(m * 255) for m in CIFAR10_MEAN])
    for seed in range(10):
        # no shift, no flip: only cutout acts
        out = _cifar_raw(dict(pad=0, flip=0.0), image, seed)
        hole = np.all(out == fill, axis=2) & np.any(image != fill, axis=2)
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        # the square may be clipped at the border, but never larger than 8×8 and it is one block
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8
        assert hole.sum() == len(rows) * len(cols)
        assert np.array_equal(out[~hole], image[~hole])
    # and at least once it lies fully inside the image: exactly 64 pixels
    sizes = [np.all(_cifar_raw(dict(pad=0, flip=0.0), image, s) == fill, axis=2).sum() for s in range(20)]
    assert 64 in sizes


def test_cifar_crop_shifts_by_at_most_4_and_flip_mirrors_half_the_time():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[10, 12] = 255  # one bright pixel to follow
    offsets, flips = set(), 0
    n = 200
    for seed in range(n):
        out = _cifar_raw(dict(cutout=0), image, seed)
        ys, xs = np.nonzero(out[..., 0] == 255)
        if len(ys) == 0:
            continue  # shifted out of view cannot happen (pixel is 10 px from the edge)
        y, x = ys[0], xs[0]
        dy = y - 10
        dx_plain, dx_flip = x - 12, (31 - x) - 12
        assert abs(dy) <= 4
        if abs(dx_plain) <= 4 and abs(dx_flip) > 4:
            offsets.add((dy, dx_plain))
        elif abs(dx_flip) <= 4:
            flips += abs(dx_plain) > 4
            offsets.add((dy, dx_flip))
    assert len(offsets) >= 40  # the crop position really varies over the 9×9 possibilities
    assert 0.35 < flips / n < 0.65


def test_old_albumentations_argument_names_are_not_used():
    pipeline = augment.cifar_train()
    dropout = [t for t in pipeline.transforms if type(t).__name__ == "CoarseDropout"][0]
    assert dropout.num_holes_range == (1, 1)
    assert tuple(dropout.hole_height_range) == (8, 8) and tuple(dropout.hole_width_range) == (8, 8)
    pad = [t for t in pipeline.transforms if type(t).__name__ == "PadIfNeeded"][0]
    assert pad.min_height == 40 and tuple(pad.fill) == tuple(round(m * 255) for m in CIFAR10_MEAN)
