"""The shared networks have exactly the specified size and shapes."""
import torch

from eva_utils import count_params, receptive_field
from eva_utils.models import CustomResNet


def test_custom_resnet_has_the_specified_parameter_count_and_output():
    model = CustomResNet()
    assert count_params(model) == 6_573_130
    out = model.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.allclose(out.exp().sum(1), torch.ones(2))


def test_custom_resnet_resolution_schedule_and_receptive_field():
    table = receptive_field(CustomResNet(), (3, 32, 32))
    pools = [(row.n_in, row.n_out) for row in table.rows if row.kind == "MaxPool2d"]
    assert pools == [(32, 16), (16, 8), (8, 4), (4, 1)]
    # hand-computed with r_out = r_in + (k - 1) * j_in along the residual (longest) path:
    # prep 3 | L1 conv 5, pool 6 (j 2) | res 10, 14 | L2 conv 18, pool 20 (j 4) | L3 conv 28, pool 32 (j 8)
    # | res 48, 64 | final 4x4 pool 64 + 3 * 8 = 88
    assert [row.r_out for row in table.rows] == [3, 5, 6, 10, 14, 18, 20, 28, 32, 48, 64, 88]
    assert table.final_rf == 88
