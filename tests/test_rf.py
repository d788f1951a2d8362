"""Tests for eva_utils.rf: receptive-field tables computed from the model.

Every expected number below was computed by hand with the S5 formulas
    n_out = floor((n_in + 2p - k)/s) + 1,  j_out = j_in*s,  r_out = r_in + (k-1)*j_in
starting from n = input size, j = 1, r = 1.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eva_utils.rf import RFTable, ReceptiveFieldError, receptive_field

FIELDS = ("n_in", "n_out", "k", "s", "p", "j_in", "j_out", "r_in", "r_out")


def conv(cin, cout, k, **kw):
    return nn.Conv2d(cin, cout, k, bias=False, **kw)


def numbers(table):
    """The numeric columns of every row, as tuples (easy to compare with literals)."""
    return [tuple(getattr(row, f) for f in FIELDS) for row in table.rows]


def small_net():
    # conv3 -> maxpool2 -> conv3
    return nn.Sequential(conv(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2, 2), conv(4, 4, 3))


def mnist_net():
    return nn.Sequential(
        conv(1, 10, 3), nn.ReLU(),      # 0
        conv(10, 10, 3), nn.ReLU(),     # 2
        conv(10, 20, 3), nn.ReLU(),     # 4
        nn.MaxPool2d(2, 2),             # 6
        conv(20, 10, 1), nn.ReLU(),     # 7
        conv(10, 10, 3), nn.ReLU(),     # 9
        conv(10, 20, 3), nn.ReLU(),     # 11
        conv(20, 10, 1), nn.ReLU(),     # 13
        conv(10, 10, 7),                # 15
        nn.Flatten(), nn.LogSoftmax(dim=-1),
    )


# --------------------------------------------------------------------------
# Hand-computed tables
# --------------------------------------------------------------------------

def test_conv_pool_conv_by_hand():
    table = receptive_field(small_net(), (1, 28, 28))
    assert isinstance(table, RFTable)
    assert [r.layer for r in table.rows] == ["0", "2", "3"]
    assert [r.kind for r in table.rows] == ["Conv2d", "MaxPool2d", "Conv2d"]
    assert numbers(table) == [
        # n_in n_out k  s  p  j_in j_out r_in r_out
        (28, 26, 3, 1, 0, 1, 1, 1, 3),
        (26, 13, 2, 2, 0, 1, 2, 3, 4),
        (13, 11, 3, 1, 0, 2, 2, 4, 8),
    ]
    assert table.final_rf == 8


def test_mnist_net_full_table():
    table = receptive_field(mnist_net(), (1, 28, 28))
    assert [r.layer for r in table.rows] == ["0", "2", "4", "6", "7", "9", "11", "13", "15"]
    assert numbers(table) == [
        # n_in n_out k  s  p  j_in j_out r_in r_out
        (28, 26, 3, 1, 0, 1, 1, 1, 3),
        (26, 24, 3, 1, 0, 1, 1, 3, 5),
        (24, 22, 3, 1, 0, 1, 1, 5, 7),
        (22, 11, 2, 2, 0, 1, 2, 7, 8),     # MaxPool2d(2, 2)
        (11, 11, 1, 1, 0, 2, 2, 8, 8),     # 1x1 conv: RF unchanged
        (11, 9, 3, 1, 0, 2, 2, 8, 12),     # after the pool each 3x3 adds 2*j = 4
        (9, 7, 3, 1, 0, 2, 2, 12, 16),
        (7, 7, 1, 1, 0, 2, 2, 16, 16),
        (7, 1, 7, 1, 0, 2, 2, 16, 28),     # 7x7 "GAP-like" conv: r = 16 + 6*2
    ]
    assert table.final_rf == 28


def test_padding_and_stride():
    model = nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 8, 3, stride=2, padding=1))
    table = receptive_field(model, (3, 32, 32))
    assert numbers(table) == [
        (32, 32, 3, 1, 1, 1, 1, 1, 3),
        (32, 16, 3, 2, 1, 1, 2, 3, 5),     # floor((32 + 2 - 3)/2) + 1 = 16
    ]


def test_reflect_padding_mode_reads_like_normal_padding():
    # padding_mode='reflect' pads inside the Conv2d module: same geometry as zero padding.
    model = nn.Sequential(conv(1, 4, 3, padding=1, padding_mode="reflect"), conv(4, 4, 5, padding=2))
    assert numbers(receptive_field(model, (1, 16, 16))) == [
        (16, 16, 3, 1, 1, 1, 1, 1, 3),
        (16, 16, 5, 1, 2, 1, 1, 3, 7),
    ]


def test_pooling_rows():
    gap = nn.Sequential(conv(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert numbers(receptive_field(gap, (1, 8, 8))) == [
        (8, 6, 3, 1, 0, 1, 1, 1, 3),
        (6, 1, 6, 6, 0, 1, 6, 3, 8),       # global pooling: k = s = n_in
    ]
    avg = nn.Sequential(conv(1, 4, 3), nn.AvgPool2d(2), conv(4, 4, 3))
    assert numbers(receptive_field(avg, (1, 28, 28))) == [
        (28, 26, 3, 1, 0, 1, 1, 1, 3),
        (26, 13, 2, 2, 0, 1, 2, 3, 4),
        (13, 11, 3, 1, 0, 2, 2, 4, 8),
    ]
    adaptive2 = nn.Sequential(conv(1, 4, 3), nn.AdaptiveMaxPool2d(2))
    assert numbers(receptive_field(adaptive2, (1, 8, 8)))[1] == (6, 2, 3, 3, 0, 1, 3, 3, 5)
    overlapping = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1))   # torchvision ResNet's stem pool
    assert numbers(receptive_field(overlapping, (1, 16, 16))) == [(16, 8, 3, 2, 1, 1, 2, 1, 3)]


class Residual(nn.Module):
    """stem -> x + conv2(conv1(x)) -> head.  The skip path has the smaller RF."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 8, 3, padding=1)
        self.conv1 = conv(8, 8, 3, padding=1)
        self.conv2 = conv(8, 8, 3, padding=1)
        self.head = conv(8, 8, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.conv2(F.relu(self.conv1(x)))
        return self.head(x)


class Projection(nn.Module):
    """Downsampling residual block with a 1x1 stride-2 projection shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = conv(1, 8, 3, padding=1)
        self.a = conv(8, 16, 3, stride=2, padding=1)
        self.b = conv(16, 16, 3, padding=1)
        self.shortcut = conv(8, 16, 1, stride=2)

    def forward(self, x):
        x = self.stem(x)
        out = self.b(F.relu(self.a(x)))
        out += self.shortcut(x)             # in-place add (Tensor.__iadd__)
        return F.relu(out)


def test_residual_add_takes_the_largest_path():
    table = receptive_field(Residual(), (1, 28, 28))
    rows = {r.layer: r for r in table.rows}
    assert rows["stem"].r_out == 3          # skip path
    assert rows["conv2"].r_out == 7         # main path
    assert rows["head"].r_in == 7           # after the add: max(3, 7)
    assert rows["head"].r_out == 9
    assert table.final_rf == 9


def test_projection_shortcut():
    table = receptive_field(Projection(), (1, 28, 28))
    assert [r.layer for r in table.rows] == ["stem", "a", "b", "shortcut"]
    assert numbers(table) == [
        (28, 28, 3, 1, 1, 1, 1, 1, 3),
        (28, 14, 3, 2, 1, 1, 2, 3, 5),
        (14, 14, 3, 1, 1, 2, 2, 5, 9),
        (28, 14, 1, 2, 0, 1, 2, 3, 3),
    ]
    # The last row is the shortcut (r = 3), but the output is the sum: RF 9.
    assert table.final_rf == 9


def test_shortcut_called_after_the_body_does_not_inherit_its_rf():
    # Notebook 12's block: out = scale * body(x); return shortcut(x) + out. The shortcut runs
    # after the body, but its input is the block's input: r_in 3, not the body's 7.
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body, self.shortcut = conv(1, 4, 3, padding=1), nn.Sequential(
                conv(4, 4, 3, padding=1), nn.ReLU(), conv(4, 4, 3, padding=1)), conv(4, 4, 1)
            self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

        def forward(self, x):
            x = self.stem(x)
            out = 0.1 * self.body(x)
            return self.head(self.shortcut(F.relu(x)) + out)

    table = receptive_field(Block(), (1, 16, 16))
    assert [(r.layer, r.r_in, r.r_out) for r in table.rows] == [
        ("stem", 1, 3), ("body.0", 3, 5), ("body.2", 5, 7), ("shortcut", 3, 3), ("head.0", 7, 8)]
    assert table.final_rf == 8


def test_shared_module_called_twice_gets_numbered():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = conv(1, 1, 3)

        def forward(self, x):
            return self.c(self.c(x))

    table = receptive_field(Twice(), (1, 12, 12))
    assert [r.layer for r in table.rows] == ["c", "c#2"]
    assert table.final_rf == 5


# --------------------------------------------------------------------------
# Clear errors for what the hooks do not handle
# --------------------------------------------------------------------------

class Up(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2)


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.one, self.five, self.mix = conv(1, 2, 1), conv(1, 2, 5, padding=2), conv(4, 4, 1)

    def forward(self, x):
        return self.mix(torch.cat([self.one(x), self.five(x)], dim=1))


class Functional(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.c, self.op = conv(1, 4, 3, padding=1), op

    def forward(self, x):
        return self.op(self.c(x))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.gap, self.fc, self.head = conv(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), \
            nn.Linear(4, 4), conv(4, 4, 1)

    def forward(self, x):
        x = self.c(x)
        w = torch.sigmoid(self.fc(self.gap(x).flatten(1))).view(1, -1, 1, 1)
        return self.head(x * w)


class Crop(nn.Module):
    def forward(self, x):
        return x[:, :, 1:-1, 1:-1]


@pytest.mark.parametrize("model, size, message", [
    # functional ops that move pixels with no module to hook
    (Functional(lambda x: F.max_pool2d(x, 3, stride=1, padding=1)), 12,     # keeps the size
     r"'MaxPool2DWithIndices' in the forward\(\) of Functional is not handled"),
    (Functional(lambda x: F.conv2d(x, torch.ones(4, 4, 3, 3), padding=1)), 12, r"'Convolution' in"),
    (Functional(lambda x: F.avg_pool2d(x, 2)), 12, r"'AvgPool2D' in the forward\(\) of Functional"),
    (Functional(lambda x: x.mean((2, 3))), 12, r"'Mean' in the forward\(\) of Functional"),
    (nn.Sequential(nn.ReLU(), Cat()), 12, r"'Cat' in layer '1' \(Cat\) is not handled"),   # seen by mix
    (nn.Sequential(conv(1, 4, 3), nn.Sequential(Up(), conv(4, 4, 3))), 16,
     r"'UpsampleNearest2D' in layer '1.0' \(Up\) is not handled"),
    (nn.Sequential(conv(1, 4, 3), nn.Upsample(scale_factor=2)), 16, r"in layer '1' \(Upsample\)"),
    (nn.Sequential(conv(1, 1, 3), Crop()), 12, r"'Slice' in layer '1' \(Crop\)"),
    (nn.Sequential(nn.ConvTranspose2d(1, 1, 2, stride=2)), 12,
     r"'Convolution' in layer '0' \(ConvTranspose2d\)"),
    # module options the formulas here do not cover
    (nn.Sequential(conv(1, 4, 3, dilation=2)), 12, r"layer '0' \(Conv2d\) uses dilation 2"),
    (nn.Sequential(conv(1, 4, 5, padding="same")), 12, r"layer '0' \(Conv2d\) has padding 'same'"),
    (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), 7, r"uses ceil_mode"),
    (nn.Sequential(conv(1, 4, 3), nn.AdaptiveAvgPool2d(4)), 8, r"6 is not divisible by 4"),
    (nn.Sequential(conv(1, 1, 1), nn.Conv2d(1, 4, (3, 1))), 12,
     r"layer '1' \(Conv2d\) has kernel_size \(3, 1\)"),
    (nn.Sequential(conv(1, 1, 1), nn.Conv2d(1, 4, 3, stride=(1, 2))), 12, r"layer '1' .*stride \(1, 2\)"),
    (nn.Sequential(conv(1, 1, 1), nn.MaxPool2d((2, 3))), 12, r"layer '1' \(MaxPool2d\) has kernel_size"),
    # merges the formulas cannot describe
    (SqueezeExcite(), 8, r"'Mul' .* spatial layout was lost at 'View'"),

])
def test_unhandled_operations_raise_a_clear_error(model, size, message):
    with pytest.raises(ReceptiveFieldError, match=message):
        receptive_field(model, (1, size, size))


def test_merging_different_grids_is_rejected():
    class Jumps(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = conv(1, 1, 3)                          # 28 -> 26, j = 1
            self.b = conv(1, 1, 1, stride=2, padding=12)    # 28 -> 26, j = 2

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ReceptiveFieldError, match="'Add' .* different jumps 1 and 2"):
        receptive_field(Jumps(), (1, 28, 28))

    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.gap = conv(1, 1, 3), nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = self.c(x)
            return x + self.gap(x)

    with pytest.raises(ReceptiveFieldError, match="different spatial sizes 1 and 10"):
        receptive_field(Broadcast(), (1, 12, 12))


def test_spatial_layer_after_flatten_is_rejected():
    class Reshape(nn.Module):
        def forward(self, x):
            return x.flatten(1).view(1, 1, 10, 10)

    model = nn.Sequential(conv(1, 1, 3), Reshape(), conv(1, 1, 3))
    with pytest.raises(ReceptiveFieldError, match=r"layer '2' \(Conv2d\).*lost at 'View' in layer '1'"):
        receptive_field(model, (1, 12, 12))


def test_bad_input_sizes_are_rejected():
    with pytest.raises(ValueError, match="square"):
        receptive_field(small_net(), (1, 28, 30))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        receptive_field(small_net(), (28, 28))
    assert issubclass(ReceptiveFieldError, ValueError)


def test_failure_leaves_model_untouched():
    model = nn.Sequential(conv(1, 4, 3), Up())
    model.train()
    with pytest.raises(ValueError):
        receptive_field(model, (1, 8, 8))
    assert model.training and model[0].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------
# Model state
# --------------------------------------------------------------------------

def test_training_flags_restored_and_parameters_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(conv(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    model.train()
    model[1].eval()                          # a deliberately mixed state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = receptive_field(model, (1, 28, 28))
    assert table.final_rf == 4
    assert model.training and model[0].training and not model[1].training and model[2].training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key   # BN running stats included
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    model.eval()
    receptive_field(model, (1, 28, 28))
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------

EXPECTED_TEXT = """\
| layer | kind      | n_in | n_out | k | s | p | j_in | j_out | r_in | r_out |
|:------|:----------|-----:|------:|--:|--:|--:|-----:|------:|-----:|------:|
| 0     | Conv2d    |   28 |    26 | 3 | 1 | 0 |    1 |     1 |    1 |     3 |
| 2     | MaxPool2d |   26 |    13 | 2 | 2 | 0 |    1 |     2 |    3 |     4 |
| 3     | Conv2d    |   13 |    11 | 3 | 1 | 0 |    2 |     2 |    4 |     8 |

Final receptive field: 8 (input 28 x 28)"""


def test_text_display_is_deterministic_plain_text():
    table = receptive_field(small_net(), (1, 28, 28))
    assert str(table) == EXPECTED_TEXT
    assert table.to_markdown() == EXPECTED_TEXT
    assert repr(table) == EXPECTED_TEXT
    assert not hasattr(table, "_repr_html_")


def test_model_without_spatial_layers():
    table = receptive_field(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (1, 4, 4))
    assert table.rows == [] and table.final_rf == 1
    assert "No convolution or pooling layers" in str(table)
