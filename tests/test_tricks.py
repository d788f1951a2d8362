"""Each trick of notebook 15 does what it claims, checked on tiny tensors on the CPU."""
import math
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eva_utils import tricks
from eva_utils.tricks import EMA, GhostBatchNorm

# --------------------------------------------------------------------------- label smoothing


def test_label_smoothing_loss_value_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
    target = torch.tensor([0])
    expected = 0.8 * -math.log(0.75) + 0.2 * (-math.log(0.75) - math.log(0.25)) / 2  # 0.39754
    assert tricks.smooth_cross_entropy(logits, target, 0.2).item() == pytest.approx(expected, rel=1e-6)
    assert tricks.smooth_cross_entropy(logits, target, 0.0).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_label_smoothing_equals_pytorch_and_supports_reductions():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 10, generator=g) * 3, torch.randint(0, 10, (16,), generator=g)
    for eps in (0.0, 0.1, 0.2):
        ref = F.cross_entropy(logits, target, label_smoothing=eps, reduction="none")
        assert torch.allclose(tricks.smooth_cross_entropy(logits, target, eps, "none"), ref, atol=1e-6)
    ours = tricks.smooth_cross_entropy(logits, target, 0.2, reduction="sum")
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2, reduction="sum").item())


# --------------------------------------------------------------------------- ghost batch norm


def _chunky_batch():
    """16 images in 4 chunks of 4 whose channel means differ a lot (0, 10, 20, 30)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 5, 5, generator=g)
    return x + torch.arange(4).repeat_interleave(4).view(16, 1, 1, 1) * 10.0


def test_ghost_bn_normalises_each_chunk():
    x = _chunky_batch()
    y = GhostBatchNorm(3, ghost_batch=4).train()(x)
    chunks = y.unflatten(0, (4, 4))
    assert torch.allclose(chunks.mean((1, 3, 4)), torch.zeros(4, 3), atol=1e-5)
    assert torch.allclose(chunks.var((1, 3, 4), unbiased=False), torch.ones(4, 3), atol=1e-3)
    plain = nn.BatchNorm2d(3).train()(x).unflatten(0, (4, 4))
    assert plain.mean((1, 3, 4)).abs().max() > 0.5  # ordinary BN leaves the chunks' offsets in


def test_ghost_bn_running_stats_average_the_chunks():
    x = _chunky_batch()
    bn = GhostBatchNorm(3, ghost_batch=4, momentum=1.0).train()
    bn(x)
    chunks = x.unflatten(0, (4, 4))
    assert torch.allclose(bn.running_mean, chunks.mean((1, 3, 4)).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, chunks.var((1, 3, 4), unbiased=True).mean(0), atol=1e-4)
    bn.eval()  # at test time: ordinary batch norm with those statistics
    ref = (x - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + bn.eps)
    assert torch.allclose(bn(x), ref, atol=1e-5)


def test_ghost_bn_with_one_chunk_is_batch_norm():
    x = _chunky_batch()
    ghost, plain = GhostBatchNorm(3, ghost_batch=16), nn.BatchNorm2d(3)
    for bn in (ghost, plain):
        nn.init.uniform_(bn.weight, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(ghost(x), plain(x), atol=1e-5)
    assert torch.allclose(ghost.running_var, plain.running_var, atol=1e-5)


def test_ghost_bn_channels_last_half_precision_and_gradients():
    x = _chunky_batch()
    bn = GhostBatchNorm(3, ghost_batch=4)
    ref = bn(x)
    y = bn(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(y, ref, atol=1e-5)
    half = bn(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32  # statistics stay float32
    xr = x.clone().requires_grad_()
    bn(xr).pow(2).sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all() and bn.bias.grad is not None


# --------------------------------------------------------------------------- frozen scales, groups


def _conv_net():
    """conv-BN-CELU, conv-ghost BN-CELU, pool, linear: both kinds of batch norm."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.CELU(0.3),
                         nn.Conv2d(4, 6, 3, bias=False), GhostBatchNorm(6, ghost_batch=4), nn.CELU(0.3),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(6, 10, bias=False))


def test_frozen_bn_scales_do_not_move_but_shifts_do():
    model = _conv_net()
    frozen = tricks.freeze_bn_scales(model)
    assert frozen == sum(bn.num_features for bn in tricks.batchnorms(model)) == 4 + 6
    groups = tricks.param_groups(model, 5e-4, bias_lr_scale=64, bias_wd_scale=1 / 64)
    assert groups[1]["lr_scale"] == 64 and groups[1]["weight_decay"] == pytest.approx(5e-4 / 64)
    assert all(p.ndim == 1 for p in groups[1]["params"]) and all(p.ndim > 1 for p in groups[0]["params"])
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    shifts_before = [p.clone() for p in groups[1]["params"]]
    model(torch.randn(8, 3, 12, 12)).logsumexp(1).sum().backward()
    opt.step()
    assert all(torch.all(bn.weight == 1) for bn in tricks.batchnorms(model))
    assert any(not torch.equal(a, p) for a, p in zip(shifts_before, groups[1]["params"]))


# --------------------------------------------------------------------------- whitening


def _correlated_images(n=64):
    """Smooth, colour-correlated images: neighbouring pixels and channels are strongly correlated."""
    g = torch.Generator().manual_seed(3)
    base = F.avg_pool2d(torch.randn(n, 1, 18, 18, generator=g), 3, stride=1)       # 16×16, smooth
    mix = torch.tensor([[1.0], [0.8], [0.6]]).view(1, 3, 1, 1)
    return base * mix + 0.05 * torch.randn(n, 3, 16, 16, generator=g)


def _cov_of_outputs(filters, images):
    out = F.conv2d(images, filters)                                   # valid: exactly the patches used
    flat = out.permute(0, 2, 3, 1).reshape(-1, filters.shape[0]).double()
    return torch.cov(flat.T)


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_whitening_output_covariance_is_identity(kind):
    images = _correlated_images()
    patches = F.unfold(images, 3).transpose(1, 2).reshape(-1, 27).double()
    corr = torch.corrcoef(patches.T)
    assert corr[0, 1] > 0.5 and corr[0, 9] > 0.5  # neighbours and channels: far from white
    filters = tricks.patch_whitening(images, patch=3, eps=1e-9, kind=kind)
    assert filters.shape == (27, 3, 3, 3)
    assert torch.allclose(_cov_of_outputs(filters, images), torch.eye(27, dtype=torch.float64), atol=2e-3)


def test_whitening_eps_damps_the_weak_directions_and_the_conv_is_frozen():
    images = _correlated_images()
    cov = _cov_of_outputs(tricks.patch_whitening(images, eps=1e-2), images)
    variances = cov.diagonal()
    assert variances[0] == pytest.approx(1.0, abs=1e-2)   # strongest direction: still unit variance
    assert variances[-1] < 0.5                              # noise directions: damped, not amplified
    assert torch.all(variances[:-1] >= variances[1:] - 1e-3)  # PCA order: strongest first
    conv = tricks.whitening_conv(tricks.patch_whitening(images))
    assert not conv.weight.requires_grad and conv.bias is None and conv.padding == (1, 1)


# --------------------------------------------------------------------------- EMA, TTA, schedule


def test_ema_update_math():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = EMA(model, momentum=0.9, every=2)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked += 7
    assert ema.update(model) is False and torch.all(ema.model[0].weight == 1.0)  # 1st call: nothing
    assert ema.update(model) is True                                              # 2nd call: average
    rho = 0.9 ** 2
    assert torch.allclose(ema.model[0].weight, torch.full((2, 2), rho * 1 + (1 - rho) * 3))
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), (1 - rho) * 2.0))
    assert ema.model[1].num_batches_tracked.item() == 7                            # integers copied
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_tta_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    out = tricks.tta_flip(model, x)
    assert torch.allclose(out, (model(x) + model(torch.flip(x, dims=[3]))) / 2)
    assert not torch.allclose(out, model(x))
    symmetric = (x + x.flip(-1)) / 2
    assert torch.allclose(tricks.tta_flip(model, symmetric), model(symmetric), atol=1e-6)


def test_piecewise_linear_schedule():
    f = tricks.piecewise_linear([0, 5, 24], [0, 0.4, 0])
    assert [f(t) for t in (0, 2.5, 5, 14.5, 24, 30)] == pytest.approx([0, 0.2, 0.4, 0.2, 0, 0])
    with pytest.raises(ValueError):
        tricks.piecewise_linear([0, 2, 1], [0, 1, 0])


def test_amp_dtype_is_none_on_the_cpu():
    assert tricks.amp_dtype("cpu") is None
