"""Notebook 15's loop: the rows accumulate as described, and every row trains (tiny, on the CPU), reproducibly."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from eva_utils import speedrun
from eva_utils.data import ArrayDataset
from eva_utils.fastdata import DeviceLoader


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), name=f"fake{n}")


TRAIN, TEST = _data(96, 0), _data(40, 1)


def test_rows_accumulate_and_probes_are_not_carried():
    rows = speedrun.recipes()
    names = [name for name, _, _ in rows]
    assert names[0] == "baseline" and names[-1] == "10 epochs" and len(rows) == len(speedrun.TRICKS)
    recipes = dict((name, r) for name, r, _ in rows)
    assert recipes["batch 1024 (probe)"].batch_size == 1024 and recipes["label smoothing"].batch_size == 512
    final = speedrun.FINAL
    assert final == recipes["10 epochs"]
    assert (final.gpu_data and final.amp and final.channels_last and final.label_smoothing == 0.2
            and final.act == "celu" and final.ghost_batch == 32 and final.freeze_bn_scales and final.whiten
            and final.ema_momentum == 0.99 and final.tta and final.epochs == 10)
    assert not speedrun.Recipe().gpu_data  # the baseline is the albumentations DataLoader
    assert "frozen BN scales" in speedrun.describe()


@pytest.mark.parametrize("row", ["baseline", "10 epochs"])
def test_a_row_trains_on_the_cpu(row):
    recipe = speedrun.for_smoke(dict((n, r) for n, r, _ in speedrun.recipes())[row])
    result = speedrun.train(recipe, TRAIN, TEST, "cpu", seed=0, max_batches=2, verbose=False, target=0.0)
    h = result.history
    assert len(h.test_acc) == 1 and np.isfinite(h.train_loss[0]) and 0 <= h.test_acc[0] <= 100
    assert result.time_to_target_s == pytest.approx(result.setup_s + h.epoch_time[0])  # target 0: first epoch
    never = speedrun.train(recipe, TRAIN, TEST, "cpu", seed=0, max_batches=1, verbose=False, target=101.0)
    assert never.time_to_target_s is None


def test_same_seed_same_run():
    recipe = replace(speedrun.for_smoke(speedrun.FINAL), amp=False)
    a, b = (speedrun.train(recipe, TRAIN, TEST, "cpu", seed=3, max_batches=2, verbose=False) for _ in range(2))
    assert a.history.train_loss == b.history.train_loss and a.history.test_loss == b.history.test_loss


def test_whitening_filters_come_from_normalised_training_images():
    filters = speedrun.whitening_filters(replace(speedrun.FINAL, whiten_images=20), TRAIN, "cpu")
    assert filters.shape == (27, 3, 3, 3) and torch.isfinite(filters).all()


def test_device_loaders_of_a_recipe():
    train, test = speedrun._loaders(replace(speedrun.FINAL, batch_size=32), TRAIN, TEST, torch.device("cpu"),
                                    torch.float32)
    assert isinstance(train, DeviceLoader) and len(train) == 96 // 32 and train.drop_last
    x, _ = next(iter(train))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert sum(len(y) for _, y in test) == 40
