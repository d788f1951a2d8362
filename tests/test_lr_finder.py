"""eva_utils.lr_finder: the range test restores everything and reads sensible values."""

import copy

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from eva_utils.lr_finder import LRResult, find_lr  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def regression_loader(n=256, batch_size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    y = 2 * x - 1 + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)


def classification_loader(n=48, batch_size=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def assert_nested_equal(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_nested_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_nested_equal(u, v)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.Adam(p, lr=1e-3),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_model_and_optimizer_restored_exactly(make_opt):
    model, loader = mlp(), classification_loader()
    opt = make_opt(model.parameters())
    # one real step first, so that momentum / Adam buffers exist and must be restored
    loss = nn.CrossEntropyLoss()(model(next(iter(loader))[0]), next(iter(loader))[1])
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()  # the finder trains in train mode; our mode must come back

    weights = copy.deepcopy(model.state_dict())  # includes BatchNorm running stats
    opt_state = copy.deepcopy(opt.state_dict())
    assert opt_state["state"], "buffers should exist before the test"

    res = find_lr(model, opt, nn.CrossEntropyLoss(), loader, end_lr=1, num_iter=20,
                  skip_start=2, skip_end=2, plot=False, progress=False, verbose=False)

    assert_nested_equal(model.state_dict(), weights)
    assert_nested_equal(opt.state_dict(), opt_state)  # lr, momentum buffers, step counts
    assert "initial_lr" not in opt.param_groups[0]  # no scheduler left attached
    assert opt.param_groups[0]["lr"] == 1e-3
    assert not model.training and not model[1].training
    assert isinstance(res, LRResult) and res.fig is None
    # ... so a second range test on the same optimizer works too
    find_lr(model, opt, nn.CrossEntropyLoss(), loader, end_lr=1, num_iter=20,
            skip_start=2, skip_end=2, plot=False, progress=False, verbose=False)
    assert_nested_equal(model.state_dict(), weights)


def test_short_loader_is_cycled_and_suggestion_within_range():
    loader = classification_loader(n=32, batch_size=16)  # only 2 batches
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    res = find_lr(model, opt, nn.CrossEntropyLoss(), loader, start_lr=1e-4, end_lr=1e-1,
                  num_iter=30, plot=False, progress=False, verbose=False, diverge_th=1e9)
    assert len(res.lrs) == len(res.losses) == 30  # 15 passes over the 2 batches
    assert not res.stopped_early
    assert res.lrs[0] == pytest.approx(1e-4) and res.lrs[-1] == pytest.approx(1e-1)
    assert all(b > a for a, b in zip(res.lrs, res.lrs[1:]))  # exponential growth
    assert res.lrs[1] / res.lrs[0] == pytest.approx(res.lrs[-1] / res.lrs[-2])
    assert 1e-4 <= res.suggested_lr <= 1e-1
    assert res.max_lr == pytest.approx(res.min_loss_lr / 10)
    assert res.history == {"lr": res.lrs, "loss": res.losses}
    assert opt.param_groups[0]["lr"] == 0.5  # start_lr did not stick


def test_too_small_num_iter_is_a_clear_error():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"num_iter=10 is too small.*num_iter >= 17"):
        find_lr(model, opt, nn.CrossEntropyLoss(), classification_loader(), num_iter=10,
                plot=False, progress=False)
    with pytest.raises(ValueError, match="start lr < end_lr"):
        find_lr(model, opt, nn.CrossEntropyLoss(), classification_loader(), start_lr=1.0, end_lr=0.1,
                plot=False, progress=False)


def test_linear_regression_suggestion_is_sensible(capsys):
    # MSE on y = 2x - 1 with x ~ N(0, 1): the loss curvature is ~2, so plain SGD
    # diverges for lr > 2 / 2 = 1. A good lr is a few hundredths to a few tenths.
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    res = find_lr(model, opt, nn.MSELoss(), regression_loader(), end_lr=10, num_iter=100,
                  plot=True, progress=False)
    assert res.stopped_early  # lr = 10 is far beyond the stable region
    assert 1e-2 <= res.suggested_lr <= 1.0
    assert 1e-2 <= res.max_lr < 1.0
    assert res.min_loss_lr > res.suggested_lr
    out = capsys.readouterr().out
    assert "suggested_lr" in out and "{finder_name}" not in out  # library chatter hidden
    ax = res.fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) >= 2  # curve + max_lr marker
    assert repr(res).startswith("LRResult(suggested_lr=")
