"""Notebook 15's training loop: a ``Recipe`` (every knob in one place) -> a timed run on CIFAR-10.

``train(recipe, train_set, test_set)`` builds the loaders, the net and the optimiser the recipe
asks for, trains, tests after every epoch and measures the **time to 94 %**: the set-up time
(data to the device, whitening filters) plus the training time of the epochs up to the first one
whose test accuracy reaches the target. Evaluation is not counted (it is a measurement, not
training), and on a GPU the clock is read only after ``torch.cuda.synchronize()``, since CUDA
calls return before the GPU has finished.

``TRICKS`` lists the rows of notebook 15, each one change on top of the previous row, and
``recipes()`` accumulates them; ``FINAL`` is the last row, the recipe that
``benchmarks/time_to_94.py`` times. ``eva.fit`` is not used here: it has no hooks for weight
averaging, half-precision inputs or a per-step schedule with per-group learning rates.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import torch

from . import augment, config, fastdata, tricks
from .data import loaders as dataloaders
from .models.fast_resnet import FastResNet
from .train import History, TrainingDiverged, backward_step
from .train import evaluate as evaluate_model


@dataclass(frozen=True)
class Recipe:
    """Every choice of a training run. The defaults are the baseline: DavidNet trained as in Page's post 4."""

    # data
    gpu_data: bool = False          # False: albumentations DataLoader (eva.loaders); True: fastdata.DeviceLoader
    batch_size: int = 512
    cutout: int = 8
    pad_mode: str = "constant"      # "reflect" on the device path only
    # network
    width: int = 64
    act: str = "relu"
    celu_alpha: float = 0.075
    ghost_batch: int = 0            # 0: ordinary batch norm
    freeze_bn_scales: bool = False
    whiten: bool = False
    whiten_eps: float = 1e-2
    whiten_images: int = 10_000     # images used to estimate the patch covariance
    out_scale: float = 0.125
    # optimisation: SGD with Nesterov momentum, lr per step = lr × piecewise_linear(fraction of training)
    epochs: int = 24
    lr: float = 0.4
    lr_knots: tuple = (0.0, 5 / 24, 1.0)
    lr_values: tuple = (0.0, 1.0, 0.0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_scale: float = 1.0      # for the batch-norm parameters (tricks.param_groups)
    bias_wd_scale: float = 1.0
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0       # 0: no weight averaging
    ema_every: int = 5
    # speed
    amp: bool = False               # mixed precision (CUDA only; see tricks.amp_dtype)
    channels_last: bool = False
    # test
    tta: bool = False

    def changes(self, other: "Recipe") -> dict:
        """The fields where ``other`` differs from this recipe."""
        mine, theirs = asdict(self), asdict(other)
        return {k: v for k, v in theirs.items() if mine[k] != v}


#: Notebook 15's rows: (name, changes to the previous row, what it is). ``probe`` rows are measured
#: but not carried into the following rows.
TRICKS = [
    ("baseline", {}, "DavidNet, albumentations DataLoader, float32, batch 512, 24 epochs"),
    ("gpu data", dict(gpu_data=True), "whole dataset on the device, augmentation per batch there"),
    ("mixed precision", dict(amp=True), "bf16/fp16 autocast, BN statistics in float32"),
    ("channels_last", dict(channels_last=True), "NHWC memory layout for the convolutions"),
    ("batch 1024 (probe)", dict(batch_size=1024, lr=0.8), "twice the batch, twice the lr; not carried on"),
    ("label smoothing", dict(label_smoothing=0.2), "targets 0.8 on the class + 0.2 spread evenly"),
    ("CELU", dict(act="celu"), "CELU(α=0.075) instead of ReLU"),
    ("ghost BN", dict(ghost_batch=32), "batch norm over chunks of 32 images"),
    ("frozen BN scales", dict(freeze_bn_scales=True, celu_alpha=0.3, lr=1.0, bias_lr_scale=64.0,
                              bias_wd_scale=1 / 64),
     "γ fixed at 1; CELU α, lr and the BN shifts' lr/decay rescaled as in Page's post"),
    ("input whitening", dict(whiten=True), "frozen 3×3 PCA whitening conv + 1×1 conv"),
    ("EMA", dict(ema_momentum=0.99, lr_knots=(0.0, 0.2, 0.8, 1.0), lr_values=(0.0, 1.0, 0.1, 0.1)),
     "evaluate a moving average of the weights; lr ends at 10 % of its peak"),
    ("flip TTA", dict(tta=True), "test on each image and its mirror image"),
    ("10 epochs", dict(epochs=10, cutout=0),
     "the final recipe: 10 epochs, without cutout (as in the public reproduction of Page's final recipe)"),
]


def recipes(base: Recipe | None = None) -> list:
    """``[(name, recipe, what)]``: each row's recipe = the previous (non-probe) row's + its changes."""
    rows, current = [], base or Recipe()
    for name, change, what in TRICKS:
        recipe = replace(current, **change)
        rows.append((name, recipe, what))
        if "probe" not in name:
            current = recipe
    return rows


FINAL = recipes()[-1][1]


def for_smoke(recipe: Recipe) -> Recipe:
    """The same recipe, shrunk so that a 2-core CPU runs it in a second: an 8-channel net, batches of 32."""
    return replace(recipe, width=8, batch_size=32, ghost_batch=8 if recipe.ghost_batch else 0, epochs=1,
                   whiten_images=200)


# --------------------------------------------------------------------------- pieces of the run


def _loaders(recipe: Recipe, train_set, test_set, device, dtype):
    """The DataLoader pair of the baseline, or the on-device pair (training batches whole: drop_last)."""
    if not recipe.gpu_data:
        train = train_set.with_transform(augment.cifar_train(cutout=recipe.cutout))
        test = test_set.with_transform(augment.cifar_test())
        return dataloaders(train, test, recipe.batch_size, device, test_batch_size=1024)
    aug = fastdata.Augment(crop_pad=4, pad_mode=recipe.pad_mode, flip=0.5, cutout=recipe.cutout)
    fmt = dict(dtype=dtype, channels_last=recipe.channels_last)
    mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD
    train = fastdata.DeviceDataset(train_set.images, train_set.labels, device, mean, std, aug, **fmt)
    test = fastdata.DeviceDataset(test_set.images, test_set.labels, device, mean, std, None, seed=0, **fmt)
    return (fastdata.DeviceLoader(train, batch_size=recipe.batch_size, drop_last=True),
            fastdata.DeviceLoader(test, batch_size=1024, train=False))


def whitening_filters(recipe: Recipe, train_set, device) -> torch.Tensor:
    """3×3 PCA whitening filters from the first ``recipe.whiten_images`` (normalised, un-augmented) images."""
    images = torch.as_tensor(train_set.images[:recipe.whiten_images]).to(device).permute(0, 3, 1, 2)
    mean = torch.tensor(augment.CIFAR10_MEAN, device=device)
    std = torch.tensor(augment.CIFAR10_STD, device=device)
    return tricks.patch_whitening(fastdata.normalise(images, mean, std), patch=3, eps=recipe.whiten_eps)


def build_model(recipe: Recipe, whitening=None) -> FastResNet:
    """The net of ``recipe`` (BN scales frozen if asked)."""
    model = FastResNet(width=recipe.width, act=recipe.act, celu_alpha=recipe.celu_alpha,
                       ghost_batch=recipe.ghost_batch, whitening=whitening, out_scale=recipe.out_scale)
    if recipe.freeze_bn_scales:
        tricks.freeze_bn_scales(model)
    return model


class _AsTested(torch.nn.Module):
    """``model`` as a speed run tests it: channels-last input, mixed precision, flip TTA if asked."""

    def __init__(self, model, tta: bool, dtype, channels_last: bool):
        super().__init__()
        self.model, self.tta, self.dtype, self.channels_last = model, tta, dtype, channels_last

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x.device, self.dtype):
            return tricks.tta_flip(self.model, x) if self.tta else self.model(x)


def evaluate(model, loader, device, tta: bool = False, dtype=None, channels_last: bool = False):
    """Test loss and accuracy (percent), with flip TTA if asked; mixed precision when ``dtype`` is given.

    ``eva.train.evaluate`` does the counting; the model is only wrapped so that it sees its inputs as in training.
    """
    return evaluate_model(_AsTested(model, tta, dtype, channels_last).eval(), loader, device)  # leaves it in eval


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _to_device(x, y, device, channels_last):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


@dataclass
class RunResult:
    """What one run measured. ``time_to_target_s`` is ``None`` if the target was never reached."""

    recipe: Recipe
    history: History
    setup_s: float
    time_to_target_s: float | None
    target: float
    model: torch.nn.Module          # the model to test: the EMA copy when the recipe averages weights
    params: int                     # trainable parameters of the trained net

    @property
    def final_acc(self) -> float:
        return self.history.test_acc[-1]

    @property
    def train_s(self) -> float:
        return self.history.wall_s


def train(recipe: Recipe, train_set, test_set, device=None, seed: int = 1, target: float = 94.0,
          max_batches: int | None = None, verbose: bool = True) -> RunResult:
    """Train ``recipe`` on CIFAR-10 (two ``ArrayDataset``) and time it; see the module docstring.

    ``max_batches`` cuts every epoch short (smoke runs); ``verbose`` prints one line per epoch.
    """
    device = torch.device(device or config.get_device())
    config.seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution algorithms once per shape
    dtype = tricks.amp_dtype(device) if recipe.amp else None
    config.synchronize(device)
    t0 = time.perf_counter()
    train_loader, test_loader = _loaders(recipe, train_set, test_set, device, dtype or torch.float32)
    whitening = whitening_filters(recipe, train_set, device) if recipe.whiten else None
    model = build_model(recipe, whitening).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = tricks.param_groups(model, recipe.weight_decay, recipe.bias_lr_scale, recipe.bias_wd_scale)
    optimizer = torch.optim.SGD(groups, lr=0.0, momentum=recipe.momentum, nesterov=True)
    ema = tricks.EMA(model, recipe.ema_momentum, recipe.ema_every) if recipe.ema_momentum else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    config.synchronize(device)
    setup_s = time.perf_counter() - t0

    steps = len(train_loader) if max_batches is None else min(len(train_loader), max_batches)
    schedule = tricks.piecewise_linear([k * recipe.epochs for k in recipe.lr_knots],
                                       [v * recipe.lr for v in recipe.lr_values])
    history, reached, clock = History(device=config.device_name(device)), None, setup_s
    for epoch in range(1, recipe.epochs + 1):
        if hasattr(train_loader.dataset, "reseed"):  # as eva.fit: a reproducible stream per epoch
            train_loader.dataset.reseed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        config.synchronize(device)
        t_epoch = time.perf_counter()
        loss, acc, lr = _train_epoch(model, train_loader, optimizer, schedule, epoch, steps, recipe, device, dtype,
                                     scaler, ema)
        config.synchronize(device)
        seconds = time.perf_counter() - t_epoch
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} in epoch {epoch} (peak lr {recipe.lr})")
        test_loss, test_acc = evaluate(ema.model if ema else model, test_loader, device, recipe.tta, dtype,
                                       recipe.channels_last)
        clock += seconds
        if reached is None and test_acc >= target:
            reached = clock
        for name, value in (("train_loss", loss), ("train_acc", acc), ("test_loss", test_loss),
                            ("test_acc", test_acc), ("lr", lr), ("epoch_time", seconds)):
            getattr(history, name).append(value)
        if verbose:
            print(f"epoch {epoch:2d}/{recipe.epochs}  lr {lr:.3g}  train loss {loss:.3f} acc {acc:6.2f}%  "
                  f"test acc {test_acc:6.2f}%  train {seconds:5.2f} s  total {clock:6.1f} s", flush=True)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return RunResult(recipe, history, setup_s, reached, target, ema.model if ema else model, params)


def _train_epoch(model, loader, optimizer, schedule, epoch, steps, recipe, device, dtype, scaler, ema):
    """One pass over ``steps`` batches; returns mean loss, accuracy (%) and the epoch's first lr."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, first_lr = 0, None
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        lr = schedule(epoch - 1 + step / steps)
        first_lr = lr if first_lr is None else first_lr
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x, y = _to_device(x, y, device, recipe.channels_last)
        with _autocast(device, dtype):
            out = model(x)
        loss = tricks.smooth_cross_entropy(out, y, recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        backward_step(loss, optimizer, scaler)
        if ema is not None:
            ema.update(model)
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, 100.0 * correct.item() / seen, first_lr


def warmup(recipe: Recipe, train_set, test_set, device) -> None:
    """A few untimed batches, so that CUDA's start-up and cuDNN's algorithm search are not charged to a row."""
    train(replace(recipe, epochs=1), train_set, test_set, device, seed=0, max_batches=5, verbose=False)


def mean_history(histories) -> History:
    """Epoch-by-epoch means of several runs of one recipe (what the 5-run Result reports)."""
    fields = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time")
    return History(**{f: [sum(v) / len(v) for v in zip(*(getattr(h, f) for h in histories))] for f in fields},
                   device=histories[0].device)


def describe(rows=None) -> str:
    """The rows as a table: name, epochs, the recipe fields it changes, what that means."""
    rows = rows or recipes()
    lines = [f"{'row':<20} {'epochs':>6}  change"]
    for (name, change, what), (_, recipe, _) in zip(TRICKS, rows):
        fields = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in change.items())
        lines.append(f"{name:<20} {recipe.epochs:>6}  {what}" + (f"\n{'':<29}({fields})" if fields else ""))
    return "\n".join(lines)


__all__ = ["FINAL", "Recipe", "RunResult", "TRICKS", "build_model", "describe", "evaluate", "for_smoke",
           "mean_history", "recipes", "train", "warmup", "whitening_filters"]
