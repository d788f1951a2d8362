"""Tests for eva_utils.rf: receptive-field tables computed from the model.

Every expected number below was computed by hand with the S5 formulas
    n_out = floor((n_in + 2p - k)/s) + 1,  j_out = j_in*s,  r_out = r_in + (k-1)*j_in
starting from n = input size, j = 1, r = 1.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eva_utils.rf import RFRow, RFTable, ReceptiveFieldError, receptive_field

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


def test_padding_same_and_reflect_padding_mode():
    # padding='same' with stride 1 is p = (k-1)//2; padding_mode='reflect' pads via
    # F.pad before the conv -- the row still reads like a normally padded layer.
    model = nn.Sequential(conv(1, 4, 5, padding="same"),
                          conv(4, 4, 3, padding=1, padding_mode="reflect"))
    table = receptive_field(model, (1, 16, 16))
    assert numbers(table) == [
        (16, 16, 5, 1, 2, 1, 1, 1, 5),
        (16, 16, 3, 1, 1, 1, 1, 5, 7),
    ]


def test_padding_same_even_kernel_is_rejected():
    with pytest.raises(ValueError, match="even"):
        receptive_field(nn.Sequential(conv(1, 4, 4, padding="same")), (1, 16, 16))


def test_dilation_uses_effective_kernel():
    model = nn.Sequential(conv(1, 4, 3, dilation=2), nn.ReLU(), conv(4, 4, 3))
    table = receptive_field(model, (1, 28, 28))
    first, second = table.rows
    assert (first.k, first.d, first.k_eff) == (3, 2, 5)
    assert numbers(table) == [
        (28, 24, 3, 1, 0, 1, 1, 1, 5),     # k_eff = 2*(3-1)+1 = 5
        (24, 22, 3, 1, 0, 1, 1, 5, 7),
    ]
    text = str(table)
    assert "| d |" in text                   # dilation column appears only when used
    assert "| d |" not in str(receptive_field(small_net(), (1, 28, 28)))


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
    ceil = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True))
    assert numbers(receptive_field(ceil, (1, 7, 7))) == [(7, 4, 2, 2, 0, 1, 2, 1, 2)]


def test_uneven_adaptive_pool_is_rejected():
    model = nn.Sequential(conv(1, 4, 3), nn.AdaptiveAvgPool2d(4))  # 6 -> 4 is not a sliding window
    with pytest.raises(ValueError, match="not divisible"):
        receptive_field(model, (1, 8, 8))


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


def test_residual_add_takes_the_max():
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


def test_mismatched_jumps_are_rejected():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = conv(1, 1, 3)                          # 28 -> 26, j = 1
            self.b = conv(1, 1, 1, stride=2, padding=12)    # 28 -> 26, j = 2

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ValueError, match="different jumps"):
        receptive_field(Bad(), (1, 28, 28))


def test_concat_and_functional_forms():
    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 1, 3, 3))
            self.branch = conv(1, 4, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = torch.cat([F.conv2d(x, self.w), self.branch(x)], dim=1)
            y = F.max_pool2d(y, 2)
            y = F.avg_pool2d(y, kernel_size=3, stride=1, padding=1)
            y = y.mean(dim=(2, 3))
            return self.fc(y)

    table = receptive_field(Func(), (1, 10, 10))
    assert [(r.layer, r.kind) for r in table.rows] == [
        ("F.conv2d#1", "F.conv2d"), ("branch", "Conv2d"),
        ("F.max_pool2d#1", "F.max_pool2d"), ("F.avg_pool2d#1", "F.avg_pool2d"),
        ("mean#1", "mean"),
    ]
    assert numbers(table) == [
        (10, 8, 3, 1, 0, 1, 1, 1, 3),
        (10, 8, 3, 1, 0, 1, 1, 1, 3),
        (8, 4, 2, 2, 0, 1, 2, 3, 4),
        (4, 4, 3, 1, 1, 2, 2, 4, 8),
        (4, 1, 4, 4, 0, 2, 8, 8, 14),       # x.mean((2, 3)) is global pooling
    ]
    assert table.final_rf == 14


def test_inception_style_cat_takes_the_max():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.one = conv(1, 2, 1)
            self.five = conv(1, 2, 5, padding=2)
            self.mix = conv(4, 4, 1)

        def forward(self, x):
            return self.mix(torch.cat([self.one(x), self.five(x)], dim=1))

    table = receptive_field(Cat(), (1, 12, 12))
    assert table.rows[-1].layer == "mix"
    assert table.rows[-1].r_in == 5


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


def test_squeeze_excitation_weights_cover_the_whole_map():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = conv(1, 4, 3, padding=1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 4)
            self.head = conv(4, 4, 1)

        def forward(self, x):
            x = self.c(x)
            w = torch.sigmoid(self.fc(self.gap(x).view(1, -1))).view(1, -1, 1, 1)
            return self.head(x * w)

    table = receptive_field(SE(), (1, 8, 8))
    assert [r.layer for r in table.rows] == ["c", "gap", "head"]
    assert table.rows[1].r_out == 10         # 3 + (8 - 1) * 1
    assert table.rows[2].r_in == 10          # x * w: the weights saw everything
    assert table.final_rf == 10


# --------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------

class Up(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2)


def test_interpolate_is_rejected_with_op_and_layer_name():
    model = nn.Sequential(conv(1, 4, 3), nn.Sequential(Up(), conv(4, 4, 3)))
    with pytest.raises(ValueError) as info:
        receptive_field(model, (1, 16, 16))
    msg = str(info.value)
    assert "interpolate" in msg and "'1.0'" in msg and "14 -> 28" in msg
    upsample = nn.Sequential(conv(1, 4, 3), nn.Upsample(scale_factor=2))
    with pytest.raises(ValueError, match="interpolate.*'1'"):
        receptive_field(upsample, (1, 16, 16))


def test_cropping_and_transposed_conv_are_rejected():
    class Crop(nn.Module):
        def forward(self, x):
            return x[:, :, 1:-1, 1:-1]

    with pytest.raises(ValueError, match="__getitem__"):
        receptive_field(nn.Sequential(conv(1, 1, 3), Crop()), (1, 12, 12))
    with pytest.raises(NotImplementedError, match="conv_transpose2d"):
        receptive_field(nn.Sequential(nn.ConvTranspose2d(1, 1, 2, stride=2)), (1, 12, 12))


@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 4, (3, 1)),
    nn.Conv2d(1, 4, 3, stride=(1, 2)),
    nn.Conv2d(1, 4, 3, padding=(1, 0)),
    nn.MaxPool2d((2, 3)),
])
def test_non_square_layers_are_rejected(layer):
    model = nn.Sequential(conv(1, 1, 1), layer)
    with pytest.raises(ValueError, match=r"layer '1'.*non-square"):
        receptive_field(model, (1, 12, 12))


def test_bad_input_sizes_are_rejected():
    with pytest.raises(ValueError, match="square"):
        receptive_field(small_net(), (1, 28, 30))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        receptive_field(small_net(), (28, 28))


def test_spatial_layer_after_flatten_is_rejected():
    class Reshape(nn.Module):
        def forward(self, x):
            x = x.flatten(1)
            return x.view(1, 1, 10, 10)

    model = nn.Sequential(conv(1, 1, 3), Reshape(), conv(1, 1, 3))
    with pytest.raises(ValueError, match="lost at 'flatten'"):
        receptive_field(model, (1, 12, 12))

    class Mix(nn.Module):
        def forward(self, x):
            return x + x.flatten(1).view(x.shape)

    with pytest.raises(ValueError, match="'add'.*lost at 'flatten'"):
        receptive_field(nn.Sequential(conv(1, 1, 3), Mix()), (1, 12, 12))


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

    class Printer:                           # what IPython's pretty printer calls
        def __init__(self):
            self.out = []

        def text(self, s):
            self.out.append(s)

    printer = Printer()
    table._repr_pretty_(printer, cycle=False)
    assert "".join(printer.out) == EXPECTED_TEXT


def test_as_dicts_and_row_access():
    table = receptive_field(small_net(), (1, 28, 28))
    dicts = table.as_dicts()
    assert list(dicts[0]) == ["layer", "kind", *FIELDS, "d"]
    assert dicts[2] == {"layer": "3", "kind": "Conv2d", "n_in": 13, "n_out": 11, "k": 3, "s": 1,
                        "p": 0, "j_in": 2, "j_out": 2, "r_in": 4, "r_out": 8, "d": 1}
    assert len(table) == 3 and isinstance(table[0], RFRow)
    assert issubclass(ReceptiveFieldError, ValueError)


def test_model_without_spatial_layers():
    table = receptive_field(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (1, 4, 4))
    assert table.rows == [] and table.final_rf == 1
    assert "No convolution or pooling layers" in str(table)


# --------------------------------------------------------------------------
# Cross-check against torchscan
# --------------------------------------------------------------------------

def _torchscan_layers(model, input_size):
    torchscan = pytest.importorskip("torchscan")
    report = torchscan.crawl_module(model, input_size)
    return {layer["path"]: layer for layer in report["layers"]}


def test_output_sizes_match_torchscan():
    model = mnist_net()
    layers = _torchscan_layers(model, (1, 28, 28))
    table = receptive_field(model, (1, 28, 28))
    conv_rows = [r for r in table.rows if r.kind == "Conv2d"]
    assert len(conv_rows) == 8
    for row in table.rows:
        shape = layers[row.layer]["output"]["shape"]
        assert layers[row.layer]["type"] == row.kind
        assert shape[-2:] == [row.n_out, row.n_out], row.layer


def test_torchscan_receptive_field_column_is_not_cumulative():
    # torchscan's "Receptive field" column is a per-layer figure, not the
    # cumulative RF of the S5 formulas -- the reason eva_utils computes its own.
    model = small_net()
    layers = _torchscan_layers(model, (1, 28, 28))
    theirs = [layers[p]["metrics"]["receptive_field"]["value"] for p in ("0", "2", "3")]
    ours = [r.r_out for r in receptive_field(model, (1, 28, 28)).rows]
    assert theirs == [3, 2, 3]
    assert ours == [3, 4, 8]
