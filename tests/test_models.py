"""Notebook 14's custom ResNet (defined in the notebook) has exactly the specified size, shapes and output."""
from pathlib import Path

import pytest
import torch

from eva_utils import count_params, receptive_field
from eva_utils.models import from_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "14_custom_resnet.ipynb"


@pytest.fixture(scope="module")
def CustomResNet():
    return from_notebook(NOTEBOOK, "CustomResNet")


def test_custom_resnet_has_the_specified_parameter_count_and_output(CustomResNet):
    model = CustomResNet()
    assert count_params(model) == 6_573_130
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.allclose(out.exp().sum(1), torch.ones(2))


def test_logits_are_scaled_by_the_notebooks_logit_scale(CustomResNet):
    torch.manual_seed(0)
    scaled, plain = CustomResNet().eval(), CustomResNet(logit_scale=1.0).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(4, 3, 32, 32)
    ratio = (scaled(x) - scaled(x).mean(1, keepdim=True)) / (plain(x) - plain(x).mean(1, keepdim=True))
    assert torch.allclose(ratio, torch.full_like(ratio, 0.125), atol=1e-4)  # log-softmax shifts, 1/8 scales


def test_custom_resnet_resolution_schedule_and_receptive_field(CustomResNet):
    table = receptive_field(CustomResNet(), (3, 32, 32))
    pools = [(row.n_in, row.n_out) for row in table.rows if row.kind == "MaxPool2d"]
    assert pools == [(32, 16), (16, 8), (8, 4), (4, 1)]
    # hand-computed with r_out = r_in + (k - 1) * j_in along the residual (longest) path:
    # prep 3 | L1 conv 5, pool 6 (j 2) | res 10, 14 | L2 conv 18, pool 20 (j 4) | L3 conv 28, pool 32 (j 8)
    # | res 48, 64 | final 4x4 pool 64 + 3 * 8 = 88
    assert [row.r_out for row in table.rows] == [3, 5, 6, 10, 14, 18, 20, 28, 32, 48, 64, 88]
    assert table.final_rf == 88
