"""Loaders read the real offline copies, cut fixed balanced smoke subsets, and fail clearly."""
import os

import numpy as np
import pytest
import torch

from eva_utils import augment, data

HAS_DATA = (data.config.data_dir() / "MNIST" / "raw").is_dir()
needs_data = pytest.mark.skipif(not HAS_DATA and not os.environ.get("CI"), reason="EVA_DATA_DIR has no MNIST copy")


def test_stratified_subset_is_balanced_fixed_and_ordered():
    labels = np.array([0, 1, 1, 2, 0, 2, 1, 0, 2, 2])
    idx = data.stratified_subset(labels, 2)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5]
    assert np.bincount(labels[idx]).tolist() == [2, 2, 2]


@needs_data
def test_mnist_full_and_smoke_subsets_are_real_data():
    full = data.mnist(train=False, smoke=False)
    assert len(full) == 10_000 and full.images.shape == (10_000, 28, 28) and full.images.dtype == np.uint8
    assert np.bincount(full.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    smoke = data.mnist(train=False)  # the test suite runs in smoke mode
    per_class = data.SMOKE_PER_CLASS["mnist"][1]
    assert len(smoke) == 10 * per_class and np.bincount(smoke.labels).tolist() == [per_class] * 10
    keep = data.stratified_subset(full.labels, per_class)
    assert np.array_equal(smoke.images, full.images[keep])  # a subset of the real images, not a stand-in
    x, y = data.mnist(train=True, transform=augment.mnist_test())[0]
    assert x.shape == (1, 28, 28) and y == 5  # the first training digit of MNIST is a 5


@needs_data
def test_cifar10_reads_the_npz():
    test = data.cifar10(train=False)
    assert test.classes[0] == "airplane" and test.images.shape[1:] == (32, 32, 3)
    x, y = test.with_transform(augment.cifar_test())[0]
    assert x.shape == (3, 32, 32) and y == 3  # the first CIFAR-10 test image is a cat


def test_missing_data_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    for loader, expected in ((data.mnist, "train-images-idx3-ubyte.gz"), (data.cifar10, "cifar10.npz")):
        with pytest.raises(data.DataNotFoundError) as err:
            loader(train=False, smoke=False)
        message = str(err.value)
        assert "EVA_DATA_DIR" in message and expected in message
        assert "$EVA_DATA_DIR/" in message and str(tmp_path) not in message  # outputs show no machine's paths
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback


def _no_network(*args, **kwargs):
    raise OSError("network disabled in tests")


def test_cifar100_offline_npz_and_smoke_stand_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path))
    # no copy: full mode refuses, smoke mode says loudly that it uses a stand-in
    with pytest.raises(data.DataNotFoundError):
        data.cifar100(train=True, smoke=False)
    standin = data.cifar100(train=True)
    assert "NOT CIFAR-100" in capsys.readouterr().out and "STAND-IN" in standin.name
    assert len(np.unique(standin.labels)) == 100 and standin.images.shape[1:] == (32, 32, 3)
    # an offline copy made by the test is read like the real one
    rng = np.random.default_rng(0)
    (tmp_path / "cifar100").mkdir()
    x = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    y = np.arange(300) % 100
    np.savez(tmp_path / "cifar100" / "cifar100.npz", x_train=x, y_train=y, x_test=x[:100], y_test=y[:100],
             classes=np.array([f"c{i}" for i in range(100)]))
    full = data.cifar100(train=True, smoke=False)
    assert len(full) == 300 and full.classes[5] == "c5" and np.array_equal(full.images, x)
    smoke = data.cifar100(train=True)
    assert len(smoke) == 100 * min(3, data.SMOKE_PER_CLASS["cifar100"][0])  # 3 images per class exist


def test_reseed_makes_augmentation_reproducible():
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    ds = data.ArrayDataset(images, np.zeros(8), augment.cifar_train())
    ds.reseed(42)
    first = [ds[i][0] for i in range(8)]
    ds.reseed(42)
    again = [ds[i][0] for i in range(8)]
    ds.reseed(43)
    other = [ds[i][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_loader_settings_follow_the_device():
    cpu = data.config.loader_settings("cpu")
    gpu = data.config.loader_settings("cuda")
    assert cpu == {"num_workers": 0, "pin_memory": False}
    assert gpu["pin_memory"] is True and gpu["num_workers"] >= 1


def test_only_the_evaluation_batch_follows_the_device():
    images = np.zeros((10, 2, 2), dtype=np.uint8)
    ds = data.ArrayDataset(images, np.arange(10) % 2, name="toy")
    train, test = data.loaders(ds, ds, 64, device="cpu")
    assert (train.batch_size, test.batch_size) == (64, 256)
    assert data.config.eval_batch_size("cuda", 64) == 1024 and data.config.eval_batch_size("cuda", 2048) == 2048
    assert data.config.eval_batch_size("cpu", 512) == 512


def test_sample_is_fixed_sorted_and_a_real_subset():
    images = np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2)
    ds = data.ArrayDataset(images, np.arange(20) % 5, name="toy")
    a, b, c = ds.sample(6), ds.sample(6), ds.sample(6, seed=1)
    assert len(a) == 6 and np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    rows = [int(img[0, 0]) // 4 for img in a.images]
    assert rows == sorted(rows) and len(set(rows)) == 6
    assert np.array_equal(a.labels, np.array(rows) % 5) and "6 sampled" in a.name


def _load_mnist_test(data_dir, barrier, out):
    os.environ["EVA_DATA_DIR"] = data_dir
    barrier.wait()  # all start together, as the runs of a sweep do
    try:
        out.put(len(data.mnist(train=False, smoke=False)))
    except Exception as err:  # noqa: BLE001 - the parent reports it
        out.put(repr(err))


@needs_data
def test_runs_that_start_together_all_read_a_fresh_mnist_copy(tmp_path):
    """Only the .gz files, as on a fresh machine: the first loader extracts them, the others wait for it."""
    import multiprocessing as mp
    import shutil

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data.MNIST_FILES:
        shutil.copy2(data.config.data_dir() / "MNIST" / "raw" / f, raw / f)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_load_mnist_test, args=(str(tmp_path), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert results == [10_000] * 4
