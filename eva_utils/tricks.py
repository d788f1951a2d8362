"""The bag of tricks of notebook 15 (Page, *How to train your ResNet 8*), one small piece each.

Each trick buys a few tenths of a percent of accuracy or a few percent of speed; together they
take DavidNet from 94 % in 24 epochs to 94 % in 10. What each one does:

* ``smooth_cross_entropy`` — **label smoothing**: the target is 1-ε on the true class and ε spread
  uniformly over all classes, so the net is not pushed to ever more extreme logits.
* ``GhostBatchNorm`` — **ghost batch norm**: normalise each chunk of 32 images with its own
  statistics, even when the batch has 512. Noisier statistics regularise, like small batches.
* ``freeze_bn_scales`` — **frozen BN scales**: fix every BN weight γ at a constant; only the shift
  β learns (and gets a much larger learning rate, ``param_groups``).
* ``patch_whitening`` / ``whitening_conv`` — **input whitening**: a first, frozen 3×3 convolution
  whose 27 filters decorrelate the 27 values of every 3×3×3 input patch (PCA or ZCA), so that the
  first trained layer sees inputs of identity covariance.
* ``EMA`` — **exponential moving average of the weights**: evaluate an average of the recent
  weights rather than the last, noisy ones.
* ``tta_flip`` — **test-time augmentation**: average the logits of an image and of its mirror image.
* ``piecewise_linear`` — the learning-rate schedule, a straight line between a few knots.
* ``amp_dtype`` — which half-precision type **mixed precision** should use on a device.

CELU (a smooth ReLU, ``nn.CELU``) and channels-last memory (``model.to(memory_format=...)``) are
one-liners of PyTorch and need no helper. The net with a switch per trick and the training loop that
uses all this are in notebook 15 itself (its cells tagged ``recipe``; ``speedrun.load`` runs them).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------- label smoothing


def smooth_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.2,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against smoothed targets: ``(1-ε)·(-log p_y) + ε·mean_k(-log p_k)``.

    With ``smoothing=0`` it is plain cross-entropy. It equals ``F.cross_entropy(...,
    label_smoothing=ε)``; written out here to show what it does. Computed in float32.
    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (so it can serve as ``eva.fit``'s criterion).
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, target[:, None]).squeeze(1)
    loss = (1 - smoothing) * nll + smoothing * -log_p.mean(dim=1)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


# --------------------------------------------------------------------------- batch norm


class GhostBatchNorm(nn.BatchNorm2d):
    """Batch norm that, in training, normalises each chunk of ``ghost_batch`` images separately.

    A batch of 512 with ``ghost_batch=32`` is normalised as 16 independent mini-batches of 32:
    each chunk's mean and variance per channel (in float32, also under mixed precision). The
    running statistics, used at test time, are updated with the average over the chunks, so
    evaluation is ordinary batch norm. A batch that does not split into whole chunks (e.g. the
    last, smaller one) is normalised as a whole.
    """

    def __init__(self, num_features: int, ghost_batch: int = 32, **kw):
        super().__init__(num_features, **kw)
        self.ghost_batch = int(ghost_batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n <= self.ghost_batch or n % self.ghost_batch:
            return super().forward(x)
        chunks = x.unflatten(0, (n // self.ghost_batch, self.ghost_batch)).float()   # S×G×C×H×W
        var, mean = torch.var_mean(chunks, dim=(1, 3, 4), keepdim=True, correction=0)
        y = (chunks - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, 1, -1, 1, 1) + self.bias.view(1, 1, -1, 1, 1)
        if self.track_running_stats:
            self._update_running_stats(mean, var, chunks[0].numel() // x.shape[1])
        return y.flatten(0, 1).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Running averages with the chunks' mean statistics (variance unbiased, like nn.BatchNorm2d)."""
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.mean(0).flatten(), momentum)
        self.running_var.lerp_(var.mean(0).flatten() * count / max(count - 1, 1), momentum)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_batch={self.ghost_batch}"


def batchnorms(model: nn.Module) -> list:
    """Every batch-norm layer of ``model`` (plain or ghost)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_scales(model: nn.Module, value: float = 1.0) -> int:
    """Fix every BN scale γ at ``value`` and stop training it; returns how many numbers were frozen.

    Batch norm makes a layer's output independent of the scale of its weights, so γ and the
    following layer's weights can trade scale freely; fixing γ removes that redundancy. Only the
    shifts β keep learning.
    """
    frozen = 0
    for bn in batchnorms(model):
        if bn.weight is not None:
            with torch.no_grad():
                bn.weight.fill_(value)
            bn.weight.requires_grad_(False)
            frozen += bn.weight.numel()
    return frozen


def param_groups(model: nn.Module, weight_decay: float, bias_lr_scale: float = 1.0,
                 bias_wd_scale: float = 1.0) -> list:
    """Optimizer groups: the batch-norm parameters (the β shifts) apart from all other weights.

    Each group carries an ``lr_scale`` that notebook 15's loop multiplies the scheduled learning rate
    with: Page trains the BN shifts with a 64× larger learning rate and 64× less weight decay once
    the scales are frozen.
    """
    bn_params = {id(p) for bn in batchnorms(model) for p in bn.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in trainable if id(p) not in bn_params]
    shifts = [p for p in trainable if id(p) in bn_params]
    return [dict(params=weights, weight_decay=weight_decay, lr_scale=1.0),
            dict(params=shifts, weight_decay=weight_decay * bias_wd_scale, lr_scale=bias_lr_scale)]


# --------------------------------------------------------------------------- input whitening


def patch_whitening(images: torch.Tensor, patch: int = 3, eps: float = 1e-2, kind: str = "pca") -> torch.Tensor:
    """Filters ``(C·p·p)×C×p×p`` that whiten the ``p×p`` patches of ``images`` (``N×C×H×W``, normalised).

    Every patch is a vector of ``D = C·p·p`` numbers (27 for 3×3 RGB). With Σ their covariance and
    ``Σ = V Λ Vᵀ`` its eigen-decomposition:

    * ``"pca"``: the filters are the rows of ``Λ^-½ Vᵀ`` — project on each principal direction,
      divide by its standard deviation (largest variance first);
    * ``"zca"``: ``V Λ^-½ Vᵀ`` — the same, rotated back, so each output stays a sharpened version
      of one input pixel.

    Either way the outputs' covariance is ``Λ/(Λ+eps)``: the identity for the directions that
    matter, while ``eps`` keeps the nearly empty directions (noise) from being blown up.
    """
    if kind not in ("pca", "zca"):
        raise ValueError(f"kind must be 'pca' or 'zca', not {kind!r}")
    cov = _patch_covariance(images, patch)
    c = images.shape[1]
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)            # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps)[:, None]
    if kind == "zca":
        filters = eigenvectors @ filters
    return filters.float().reshape(-1, c, patch, patch)


def _patch_covariance(images: torch.Tensor, patch: int, chunk: int = 1000) -> torch.Tensor:
    """Covariance (float64) of all ``patch×patch`` patches of ``images``, a chunk of images at a time.

    10,000 CIFAR images have 9 million 3×3 patches; as one float32 matrix that is 1 GB, so the sums
    ``Σx`` and ``Σxxᵀ`` are accumulated instead.
    """
    d = images.shape[1] * patch * patch
    total = torch.zeros(d, dtype=torch.float64, device=images.device)
    outer = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, len(images), chunk):
        x = F.unfold(images[start:start + chunk].double(), patch).transpose(1, 2).reshape(-1, d)   # patches × D
        total += x.sum(0)
        outer += x.T @ x
        count += len(x)
    mean = total / count
    return (outer - count * torch.outer(mean, mean)) / (count - 1)


def whitening_conv(filters: torch.Tensor, padding: int | None = None) -> nn.Conv2d:
    """A frozen convolution (no bias, ``padding`` p//2 by default) with the given whitening filters."""
    k, c, p, _ = filters.shape
    conv = nn.Conv2d(c, k, p, padding=p // 2 if padding is None else padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(filters)
    conv.weight.requires_grad_(False)
    return conv


# --------------------------------------------------------------------------- weight averaging


class EMA:
    """An exponential moving average of a model's weights, updated every ``every`` training steps.

    ``ema = ρ·ema + (1-ρ)·current`` with ``ρ = momentum ** every``, over every floating-point
    parameter and buffer (BN running statistics included); integer buffers (BN's batch counter)
    are copied. Averaging the last few hundred steps cancels part of their noise: the average
    often sits closer to the bottom of the valley than any single step. ``ema.model`` is the
    averaged copy, in eval mode, to evaluate with.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.99, every: int = 5):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.rho = momentum ** every
        self.every = int(every)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> bool:
        """Call after every optimizer step; averages on every ``every``-th call. Returns whether it did."""
        self.steps += 1
        if self.steps % self.every:
            return False
        for avg, now in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(now.to(avg.dtype), 1.0 - self.rho)
            else:
                avg.copy_(now)
        return True


# --------------------------------------------------------------------------- test time


def tta_flip(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the mean of the logits for ``x`` and for ``x`` mirrored left-right."""
    return (model(x) + model(x.flip(-1))) / 2


# --------------------------------------------------------------------------- schedule and precision


def piecewise_linear(knots, values):
    """``f(t)``: straight lines through the points ``(knots[i], values[i])``, constant beyond the ends.

    ``piecewise_linear([0, 5, 24], [0, 0.4, 0])`` rises to 0.4 at t = 5 and falls back to 0 at t = 24.
    """
    knots, values = np.asarray(knots, float), np.asarray(values, float)
    if len(knots) != len(values) or np.any(np.diff(knots) < 0):
        raise ValueError("knots must be increasing and as many as values")
    return lambda t: float(np.interp(t, knots, values))


def amp_dtype(device) -> torch.dtype | None:
    """Half-precision type for mixed precision on ``device``, or ``None`` where it does not pay.

    bfloat16 on GPUs with bf16 tensor cores (compute capability 8+, Ampere and later: no loss
    scaling needed), float16 on older ones such as the T4 or V100 (with a ``GradScaler``).
    ``None`` on the CPU: most CPUs have no fast half-precision convolutions (on the course's
    2-core test machine bf16 autocast made a training step ~20× slower).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


__all__ = ["EMA", "GhostBatchNorm", "amp_dtype", "batchnorms", "freeze_bn_scales", "param_groups",
           "patch_whitening", "piecewise_linear", "smooth_cross_entropy", "tta_flip", "whitening_conv"]
