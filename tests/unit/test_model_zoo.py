"""The CIFAR model zoo, torchvision builders and FeatureTaps: sizes, shapes, gradients, error messages."""

import socket

import pytest
import torch
import torch.nn.functional as F

from divlab.models.features import FeatureTaps, feature_shapes
from divlab.models.zoo import build_model, zoo_names

# parameter counts at 100 classes of the reference CIFAR implementations (RepDistiller / CRD)
REFERENCE_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}

# per-example feature shapes on 32x32 inputs, one model per family (the reference models' feature shapes)
FEATURE_SHAPES = {
    "resnet8": {"stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8), "pool": (64,)},
    "resnet32x4": {"stage1": (64, 32, 32), "stage2": (128, 16, 16), "stage3": (256, 8, 8), "pool": (256,)},
    "wrn_16_2": {"stage1": (32, 32, 32), "stage2": (64, 16, 16), "stage3": (128, 8, 8), "pool": (128,)},
    "vgg8": {
        "stage1": (64, 32, 32),
        "stage2": (128, 16, 16),
        "stage3": (256, 8, 8),
        "stage4": (512, 4, 4),
        "stage5": (512, 4, 4),
        "pool": (512,),
    },
    "MobileNetV2": {
        "stage1": (12, 16, 16),
        "stage2": (16, 8, 8),
        "stage3": (48, 4, 4),
        "stage4": (160, 2, 2),
        "pool": (1280,),
    },
    "ShuffleV1": {"stage1": (240, 16, 16), "stage2": (480, 8, 8), "stage3": (960, 4, 4), "pool": (960,)},
    "ShuffleV2": {"stage1": (116, 16, 16), "stage2": (232, 8, 8), "stage3": (464, 4, 4), "pool": (1024,)},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-2 CPU passes are dominated by threading overhead; one thread is ~4x faster on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_names_are_the_reference_names():
    assert zoo_names() == list(REFERENCE_PARAMS)
    assert "torchvision:resnet18" in zoo_names(include_torchvision=True)


@pytest.mark.parametrize("name, expected", REFERENCE_PARAMS.items())
def test_parameter_count_matches_reference(name, expected):
    assert n_params(build_model(name, num_classes=100)) == expected


@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_forward_backward_and_features(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    assert model.num_classes == 7 and model.feature_names[-1] == "pool"
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 6])
    logits, feats = FeatureTaps(model)(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert list(feats) == list(model.feature_names)
    torch.testing.assert_close(model.fc(feats["pool"]), logits)  # `pool` is exactly the classifier's input
    F.cross_entropy(logits, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", list(FEATURE_SHAPES))
def test_feature_shapes(name):
    model = build_model(name, num_classes=100)
    assert feature_shapes(model) == FEATURE_SHAPES[name]
    assert model.training  # the dry run restores the mode
    with FeatureTaps(model, ["stage2", "pool"]) as taps:
        model(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in taps.features.items()} == {
        k: (2, *FEATURE_SHAPES[name][k]) for k in ("stage2", "pool")
    }


def test_feature_taps_nested_names_gradients_and_hook_removal():
    model = build_model("resnet8", num_classes=10)
    with FeatureTaps(model, ["stage2.0.conv1", "stage3"]) as taps:
        model(torch.randn(2, 3, 32, 32))
    assert taps.features["stage2.0.conv1"].shape == (2, 32, 16, 16)
    taps.features["stage3"].pow(2).mean().backward()  # features stay on the graph for feature losses
    assert model.stem[0].weight.grad is not None and model.fc.weight.grad is None
    assert all(not m._forward_hooks for m in model.modules())  # the with-block removed its hooks

    taps = FeatureTaps(model, "pool")  # a single name as a string
    _, first = taps(torch.randn(2, 3, 32, 32))
    _, second = taps(torch.randn(2, 3, 32, 32))
    assert set(first) == set(second) == {"pool"} and not torch.equal(first["pool"], second["pool"])
    taps.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_feature_taps_unknown_name_lists_available_modules():
    model = build_model("wrn_16_1", num_classes=10)
    with pytest.raises(
        ValueError, match=r"unknown feature name\(s\) \['stage9'\].*stage1, stage2, stage3, pool"
    ):
        FeatureTaps(model, ["stage1", "stage9"])
    assert all(not m._forward_hooks for m in model.modules())  # nothing half-registered


def test_build_model_unknown_name_lists_choices():
    with pytest.raises(
        ValueError, match=r"unknown model 'resnet33'.*resnet8, resnet14.*ShuffleV2.*torchvision:"
    ):
        build_model("resnet33", num_classes=10)
    with pytest.raises(ValueError, match=r"did you mean .*resnet32x4"):
        build_model("Resnet32X4", num_classes=10)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_model("resnet8", num_classes=0)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_torchvision_builder_offline(no_network):
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=10)
    assert model.num_classes == 10 and model.fc.out_features == 10
    assert model.feature_names == ("layer1", "layer2", "layer3", "layer4", "avgpool")
    logits, feats = FeatureTaps(model, ["layer4"])(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats["layer4"].shape == (2, 512, 1, 1)
    with pytest.raises(ValueError, match=r"unknown torchvision builder 'resnet19'.*resnet18"):
        build_model("torchvision:resnet19", num_classes=10)
    with pytest.raises(ValueError, match="never downloads"):
        build_model("torchvision:resnet18", num_classes=10, weights="DEFAULT")


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["resnet50", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16"])
def test_torchvision_imagenet_models_at_224(builder, no_network):
    model = build_model(f"torchvision:{builder}", num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 100)
