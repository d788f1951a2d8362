"""eva_utils.summary: exact parameter counts, deterministic torchsummary text, exact MACs."""

import torch
import torch.nn.functional as F
from torch import nn

from eva_utils.summary import SummaryText, count_params, model_cost, model_summary


class HeavyNet(nn.Module):
    """The course's first MNIST network (6.4 M parameters, biases everywhere)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv4 = nn.Conv2d(128, 256, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv5 = nn.Conv2d(256, 512, 3)
        self.conv6 = nn.Conv2d(512, 1024, 3)
        self.conv7 = nn.Conv2d(1024, 10, 3)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv2(F.relu(self.conv1(x)))))  # 28 -> 14
        x = self.pool2(F.relu(self.conv4(F.relu(self.conv3(x)))))  # 14 -> 7
        x = F.relu(self.conv6(F.relu(self.conv5(x))))  # 7 -> 5 -> 3
        x = self.conv7(x)  # 3 -> 1
        return F.log_softmax(x.view(-1, 10), dim=-1)


def small_net():
    """Bias-free, with BatchNorm (2 params/channel) to check buffers are not counted."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, bias=False),  # 8*1*3*3   = 72
        nn.BatchNorm2d(8),  # gamma+beta = 16 (running stats are buffers)
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, bias=False),  # 16*8*3*3  = 1152
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10, bias=False),  # 160
    )


def test_count_params_heavy_net_exact():
    # (1*9+1)*32 + (32*9+1)*64 + (64*9+1)*128 + (128*9+1)*256 + (256*9+1)*512
    # + (512*9+1)*1024 + (1024*9+1)*10
    assert count_params(HeavyNet()) == 6_379_786


def test_count_params_bias_free_small_net_and_trainable_only():
    net = small_net()
    assert count_params(net) == 72 + 16 + 1152 + 160 == 1400
    net[0].weight.requires_grad_(False)  # freeze the first conv
    assert count_params(net) == 1400 - 72
    assert count_params(net, trainable_only=False) == 1400


def test_model_summary_text_deterministic_and_model_restored(capsys):
    net = HeavyNet().train()
    net.conv3.eval()  # a sub-module in a different mode must keep its own flag
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()

    text1 = model_summary(net, (1, 28, 28))
    printed = capsys.readouterr().out
    text2 = model_summary(net, [1, 28, 28], device="cpu")  # list works as well

    assert isinstance(text1, str) and isinstance(text1, SummaryText)
    assert printed == text1  # printed once, returned identical
    assert text1 == text2  # deterministic: no addresses, no timings
    assert "Total params: 6,379,786" in text1
    assert "Trainable params: 6,379,786" in text1
    assert "[-1, 10, 1, 1]" in text1  # conv7 output shape, batch shown as -1
    assert "0x" not in text1
    # model untouched: weights, flags, device; global RNG not consumed
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and not net.conv3.training and net.conv1.training
    assert next(net.parameters()).device.type == "cpu"
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_model_summary_does_not_touch_batchnorm_stats_and_no_notebook_echo(capsys):
    net = small_net().train()
    text = model_summary(net, (1, 10, 10))
    capsys.readouterr()
    assert "Total params: 1,400" in text
    assert torch.equal(net[1].running_mean, torch.zeros(8))  # probe ran in eval mode
    assert int(net[1].num_batches_tracked) == 0
    assert net.training and net[1].training
    # IPython would NOT echo the returned text a second time as Out[n]
    from IPython.core.formatters import IPythonDisplayFormatter

    assert IPythonDisplayFormatter()(text) is True


def test_model_cost_exact_macs_tiny_net():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=False),  # 1x8x8 -> 2x6x6: 72 outputs * (1*3*3) = 648
        nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1, groups=2),  # depthwise: 72 outputs * (1*3*3) = 648
        nn.MaxPool2d(2),  # 2x3x3, not counted
        nn.Flatten(),
        nn.Linear(18, 4),  # 4 outputs * 18 = 72
    ).train()
    cost = model_cost(net, (1, 8, 8))
    assert cost["macs"] == 648 + 648 + 72 == 1368
    assert cost["params"] == 18 + (18 + 2) + (72 + 4) == 114
    assert cost["trainable_params"] == 114
    assert net.training


def test_model_cost_heavy_net_and_agreement_with_torchscan_per_layer():
    net = HeavyNet()
    cost = model_cost(net, (1, 28, 28))
    # conv outputs (C*H*W) times C_in*9 per output value
    expected = (
        32 * 28 * 28 * 1 * 9
        + 64 * 28 * 28 * 32 * 9
        + 128 * 14 * 14 * 64 * 9
        + 256 * 14 * 14 * 128 * 9
        + 512 * 5 * 5 * 256 * 9
        + 1024 * 3 * 3 * 512 * 9
        + 10 * 1 * 1 * 1024 * 9
    )
    assert cost["macs"] == expected
    assert cost["params"] == 6_379_786

    # torchscan (0.2.x report format) agrees on the conv layers
    from torchscan import crawl_module

    report = crawl_module(net, (1, 28, 28))
    conv_macs = sum(
        layer["metrics"]["macs"]["value"] for layer in report["layers"] if layer["type"] == "Conv2d"
    )
    assert conv_macs == expected
