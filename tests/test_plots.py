"""eva_utils.plots and eva_utils.mistakes on tiny synthetic data where the right answer is known by construction."""

import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from eva_utils.mistakes import (  # noqa: E402
    gradcam_heatmaps,
    misclassified,
    per_class_accuracy,
    show_gradcam,
    show_misclassified,
)
from eva_utils.plots import denormalize, plot_history, show, show_samples  # noqa: E402

MEAN, STD = (0.5,), (0.25,)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


class BlobNet(nn.Module):
    """Predicts class 1 ("pos") if the image's blob is positive, class 0 ("neg") if negative.

    conv channel 0 = -x, channel 1 = +x; after ReLU and global average pooling,
    logit_c = mean of channel c. Nothing is learned: the answer is known.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)  # would randomise predictions if eval mode were forgotten
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = -1.0
            self.conv.weight[1, 0, 1, 1] = 1.0

    def forward(self, x):
        return self.drop(self.flat(self.pool(self.relu(self.conv(x)))))


def blob_data():
    """12 images 1x8x8: a 3x3 blob of +-1 at varying places; signs and labels chosen by hand."""
    signs = [1, -1, 1, 1, -1, -1, 1, -1, 1, 1, -1, 1]
    labels = [1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1]  # wrong at indices 2, 5, 8
    x = torch.zeros(len(signs), 1, 8, 8)
    for i, s in enumerate(signs):
        r, c = (i * 2) % 6, (i * 3) % 6
        x[i, 0, r: r + 3, c: c + 3] = s
    return x, torch.tensor(labels)


WRONG = [2, 5, 8]


def loader(batch_size=5):
    x, y = blob_data()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


# --------------------------------------------------------------------------- display basics
def test_denormalize_inverts_normalize_gray_and_rgb():
    pixels = torch.rand(1, 4, 4)
    out = denormalize((pixels - 0.5) / 0.25, MEAN, STD)
    assert out.shape == (4, 4) and np.allclose(out, pixels.numpy(), atol=1e-6)
    rgb = torch.rand(3, 4, 5)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    norm = (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    out = denormalize(norm, mean, std)
    assert out.shape == (4, 5, 3) and np.allclose(out, rgb.permute(1, 2, 0).numpy(), atol=1e-6)


def test_show_samples_dataset_and_loader():
    pixels = torch.rand(10, 1, 6, 6)
    ds = TensorDataset((pixels - 0.5) / 0.25, torch.arange(10) % 3)
    fig = show_samples(ds, classes=["a", "b", "c"], n=16, mean=MEAN, std=STD, ncols=4, return_fig=True)
    assert len(fig.axes) == 10  # only 10 images exist; unused grid cells removed
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "b", "c", "a"]
    first = fig.axes[0].images[0]
    assert first.get_cmap().name == "gray"
    assert np.allclose(first.get_array(), pixels[0, 0].numpy(), atol=1e-6)  # de-normalised

    rgb = TensorDataset(torch.randn(20, 3, 5, 5), torch.zeros(20, dtype=torch.long))
    fig = show_samples(DataLoader(rgb, batch_size=3), n=5, return_fig=True)
    assert len(fig.axes) == 5 and fig.axes[0].images[0].get_array().shape == (5, 5, 3)
    assert fig.axes[0].get_title() == "0"  # no class names: the label index


def test_default_returns_none_and_does_not_leak_figures():
    ds = TensorDataset(torch.rand(4, 1, 5, 5), torch.zeros(4, dtype=torch.long))
    assert show_samples(ds, n=4) is None
    assert plt.get_fignums() == []


def test_plot_history_two_or_three_panels():
    h = SimpleNamespace(
        train_loss=[1.0, 0.5, 0.3], test_loss=[0.9, 0.6, 0.4],
        train_acc=[60.0, 80.0, 90.0], test_acc=[62.0, 79.0, 88.0], lr=[0.01, 0.01, 0.01],
    )
    fig = plot_history(h, return_fig=True)
    assert len(fig.axes) == 2  # constant lr: no lr panel
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 2
    assert list(acc_ax.lines[1].get_ydata()) == [62.0, 79.0, 88.0]
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]  # epochs count from 1

    d = dict(vars(h), lr=[0.1, 0.05, 0.01])  # a dict works too
    fig = plot_history(d, return_fig=True)
    assert len(fig.axes) == 3
    assert list(fig.axes[2].lines[0].get_ydata()) == [0.1, 0.05, 0.01]


def test_plot_history_of_several_runs_pairs_train_and_test_per_run():
    def run(acc, lr):
        return SimpleNamespace(train_loss=[1.0, 0.5], test_loss=[0.9, 0.6], train_acc=[80.0, 90.0],
                               test_acc=list(acc), lr=lr)
    fig = plot_history({"step": run([97.0, 98.0], [0.01, 0.001]), "onecycle": run([98.5, 99.1], [0.05, 0.005])},
                       return_fig=True, acc_ylim=(96, 100))
    loss_ax, acc_ax, lr_ax = fig.axes
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels == ["step train", "step test", "onecycle train", "onecycle test"] and loss_ax.get_legend() is None
    for ax in (loss_ax, acc_ax):
        train, test = ax.lines[2], ax.lines[3]  # one run's pair: same colour, train dashed, test solid
        assert train.get_color() == test.get_color() != ax.lines[0].get_color()
        assert (train.get_linestyle(), test.get_linestyle()) == ("--", "-")
    assert list(acc_ax.lines[3].get_ydata()) == [98.5, 99.1] and acc_ax.get_ylim() == (96, 100)
    assert [list(line.get_ydata()) for line in lr_ax.lines] == [[0.01, 0.001], [0.05, 0.005]]


def test_plot_history_zooms_on_the_last_epochs():
    test_acc = [97.0, 98.5, 99.0, 99.31, 99.38, 99.42, 99.35, 99.44]
    h = SimpleNamespace(train_loss=[1.0] * 8, test_loss=[0.9] * 8, train_acc=[96.0, 98.0, 98.7, 99.0, 99.1, 99.2,
                        99.25, 99.3], test_acc=test_acc, lr=[0.1, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001])
    fig = plot_history(h, return_fig=True, last=4)
    loss_ax, acc_ax, zoom_ax, lr_ax = fig.axes
    assert zoom_ax.get_title() == "Accuracy, last 4 epochs" and lr_ax.get_title() == "Learning rate"
    train, test = zoom_ax.lines
    assert list(test.get_xdata()) == [5, 6, 7, 8] and list(test.get_ydata()) == test_acc[-4:]
    assert list(train.get_ydata()) == [99.1, 99.2, 99.25, 99.3]
    low, high = zoom_ax.get_ylim()  # fitted to the last epochs: 0.1 points is a visible step
    assert 99.0 < low < 99.1 and 99.44 < high < 99.6 and (high - low) < 1.0
    assert acc_ax.get_ylim()[0] < 97.0  # the full panel still shows every epoch
    assert [t.get_text() for t in zoom_ax.texts] == ["99.38", "99.42", "99.35", "99.44"]

    assert len(plot_history(h, return_fig=True, last=8).axes) == 3  # no more epochs than `last`: no zoom
    many = {f"seed {s}": h for s in range(3)}
    fig = plot_history(many, return_fig=True, last=4)
    assert len(fig.axes[2].lines) == 6 and not fig.axes[2].texts  # 3 runs x train/test, no numbers written


@pytest.mark.parametrize("mode", ["smoke", "full"])
def test_a_lesson_figure_says_smoke_only_in_a_smoke_run(monkeypatch, mode):
    monkeypatch.setenv("EVA_MODE", mode)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    fig.suptitle("LR range test")
    show(fig)
    title = fig._suptitle.get_text()
    assert title == ("SMOKE RUN: not results | LR range test" if mode == "smoke" else "LR range test")
    assert plt.get_fignums() == []  # shown and closed, like the package's plots


# --------------------------------------------------------------------------- mistakes
def test_misclassified_exact_and_restores_training_mode():
    x, y = blob_data()
    model = BlobNet().train()
    found = misclassified(model, loader(batch_size=5))  # mistakes spread over batches
    assert model.training and model.drop.training
    assert [(t, p) for _, t, p in found] == [(int(y[i]), 1 - int(y[i])) for i in WRONG]
    for (img, _, _), i in zip(found, WRONG):
        assert torch.equal(img, x[i])  # the stored (normalised) image itself
    assert len(misclassified(model, loader(), limit=2)) == 2
    assert model.training


def test_show_misclassified_grid_and_no_mistake_message(capsys):
    model = BlobNet()
    fig = show_misclassified(model, loader(), classes=["neg", "pos"], n=20, return_fig=True)
    assert len(fig.axes) == 3 and all(len(ax.images) == 1 for ax in fig.axes)
    assert fig.axes[0].get_title() == "neg → pos"  # index 2: true 0, predicted 1
    assert fig.axes[1].get_title() == "pos → neg"

    x, y = blob_data()
    keep = [i for i in range(len(y)) if i not in WRONG]
    perfect = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=4)
    assert show_misclassified(model, perfect, return_fig=True) is None
    assert "No misclassified samples" in capsys.readouterr().out


def test_per_class_accuracy_exact(capsys):
    model = BlobNet().train()
    acc = per_class_accuracy(model, loader(batch_size=4), ["neg", "pos", "none"])
    # neg: labels 0 at 1,2,4,7,8,10 -> wrong at 2,8 -> 4/6 ; pos: 1 at 0,3,5,6,9,11 -> wrong at 5 -> 5/6
    assert acc["neg"] == pytest.approx(400 / 6)
    assert acc["pos"] == pytest.approx(500 / 6)
    assert math.isnan(acc["none"])
    assert list(acc) == ["neg", "pos", "none"]
    out = capsys.readouterr().out
    assert "neg" in out and "66.67%" in out and "83.33%" in out and "n/a" in out
    assert "overall" in out and "75.00%" in out  # 9/12
    assert model.training


# --------------------------------------------------------------------------- Grad-CAM
def test_gradcam_heatmap_shape_range_and_localisation():
    x, y = blob_data()
    model = BlobNet().train()
    maps = gradcam_heatmaps(model, model.relu, x[:4], targets=[1, 0, 1, 1])
    assert maps.shape == (4, 8, 8)
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert all(m.max() - m.min() > 0.5 for m in maps)  # not constant
    # the map lights up where the blob is (image 0: rows 0-2, cols 0-2)
    assert maps[0][:3, :3].mean() > 0.5 and maps[0][5:, 5:].mean() < 0.1
    assert model.training and model.drop.training  # GradCAM's model.eval() undone
    assert all(p.grad is None for p in model.parameters())  # gradients cleared


def test_show_gradcam_on_misclassified_samples():
    model = BlobNet()
    samples = misclassified(model, loader())
    fig = show_gradcam(model, model.relu, samples, classes=["neg", "pos"], mean=MEAN, std=STD, return_fig=True)
    assert len(fig.axes) == 3
    overlay = fig.axes[0].images[0].get_array()
    assert overlay.shape == (8, 8, 3) and overlay.dtype == np.uint8
    assert fig.axes[2].get_title() == "neg → pos"
