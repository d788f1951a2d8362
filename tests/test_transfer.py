"""eva_utils.transfer: pretrained loader (cached / offline / smoke), head, freezing, ImageNet pipelines.

No test touches the network: the download function is replaced, and "pretrained" weights are a
seeded random state dict written where torchvision caches its downloads.
"""
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from eva_utils import transfer

W18 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty hub cache and data dir, and no network: a download attempt raises URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "data"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def _fake_weights(path):
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_full_mode_offline_raises_a_clear_error(offline):
    with pytest.raises(transfer.WeightsUnavailableError) as err:
        transfer.pretrained("resnet18", 100, weights="IMAGENET1K_V1", smoke=False)
    msg = str(err.value)
    assert W18.url in msg and "resnet18-f37072fd.pth" in msg and "never falls back" in msg
    assert offline == [W18.url]  # it did try to download, once


def test_smoke_mode_offline_uses_random_weights_loudly(offline, capsys):
    model = transfer.pretrained("resnet18", 100, weights="IMAGENET1K_V1", smoke=True)
    assert model.weights_loaded is None
    assert "RANDOM weights" in capsys.readouterr().out
    assert offline == []  # smoke runs never download


@pytest.mark.parametrize("where", ["hub", "data"])
def test_loads_a_local_copy_without_network(tmp_path, offline, where, capsys):
    path = (tmp_path / "torch" / "hub" / "checkpoints" if where == "hub" else tmp_path / "data" / "weights")
    state = _fake_weights(path / "resnet18-f37072fd.pth")
    model = transfer.pretrained("resnet18", 100, weights=W18, smoke=False)
    assert model.weights_loaded == "ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert offline == [] and "RANDOM" not in capsys.readouterr().out


def test_new_head_has_the_right_size():
    model = transfer.pretrained("resnet18", 100, weights=None)
    assert model.fc.out_features == 100 and model.fc.in_features == 512
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 100)
    assert sum(p.numel() for p in model.parameters()) == 11_227_812
    with pytest.raises(ValueError, match="no weights"):
        transfer.pretrained("resnet18", 10, weights="IMAGENET9K")


def test_freeze_backbone_trains_only_the_head():
    torch.manual_seed(0)
    model = transfer.pretrained("resnet18", 100, weights=None)
    assert transfer.freeze_backbone(model) == 100 * 512 + 100
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}

    conv, fc = model.conv1.weight.clone(), model.fc.weight.clone()
    stats = model.bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()  # what the training loop does every epoch
    x, y = torch.randn(4, 3, 64, 64) * 3 + 1, torch.randint(0, 100, (4,))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert torch.equal(model.conv1.weight, conv) and model.conv1.weight.grad is None
    assert torch.equal(model.bn1.running_mean, stats), "frozen BN must not update its running statistics"
    assert not torch.equal(model.fc.weight, fc)


def test_discriminative_groups_give_the_backbone_a_smaller_lr():
    model = transfer.pretrained("resnet18", 100, weights=None)
    groups = transfer.discriminative_groups(model, 1e-3, backbone_factor=0.1)
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    assert sum(p.numel() for p in groups[0]["params"]) == 51_300
    assert sum(p.numel() for g in groups for p in g["params"]) == 11_227_812


def test_imagenet_pipelines_sizes_and_randomness():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    train, test = transfer.imagenet_train(64), transfer.imagenet_test(64)
    train.set_random_seed(0)
    outs = [train(image=image)["image"] for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:]), "the train pipeline must be random"
    a, b = test(image=image)["image"], test(image=image)["image"]
    assert a.shape == (3, 64, 64) and torch.equal(a, b)


def test_test_pipeline_resizes_then_crops_the_centre():
    # a 32×32 image, left half black, right half white, with a 1-pixel red frame: resize to 73 then crop the
    # central 64 cuts the frame off (a plain resize to 64 would keep it).
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, 16:] = 255
    image[0, :], image[-1, :], image[:, 0], image[:, -1] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    out = transfer.imagenet_test(64)(image=image)["image"]
    pixels = out * torch.tensor(transfer.IMAGENET_STD)[:, None, None] + torch.tensor(transfer.IMAGENET_MEAN)[:, None, None]
    assert pixels[0, :, :2].max() < 0.05  # no red at the left edge: the red frame was cropped away
    assert pixels[:, 32, 60].min() > 0.95  # the right half is white


def test_normalisation_matches_torchvision_weights():
    preset = W18.transforms()
    assert tuple(preset.mean) == transfer.IMAGENET_MEAN and tuple(preset.std) == transfer.IMAGENET_STD
    assert round(preset.crop_size[0] * transfer.RESIZE_RATIO) == preset.resize_size[0]
