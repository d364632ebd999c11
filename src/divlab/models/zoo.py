"""Models by name: the CIFAR zoo of the KD benchmarks and torchvision's builders.

build_model("resnet32x4", num_classes=100)
build_model("torchvision:resnet18", num_classes=10)   # torchvision builder, weights=None: never downloads
"""

import difflib
from functools import partial

from torch import nn

from divlab.errors import ConfigError
from divlab.models.cifar import VGG, CifarResNet, MobileNetV2, ShuffleNetV1, ShuffleNetV2, WideResNet

TORCHVISION_PREFIX = "torchvision:"

# the names of RepDistiller / CRD / mdistiller, so configs and published tables read the same
_CIFAR_ZOO = {
    **{
        f"resnet{d}": partial(CifarResNet, depth=d, widths=(16, 16, 32, 64))
        for d in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": partial(CifarResNet, depth=8, widths=(32, 64, 128, 256)),
    "resnet32x4": partial(CifarResNet, depth=32, widths=(32, 64, 128, 256)),
    **{
        f"wrn_{d}_{k}": partial(WideResNet, depth=d, widen=k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))
    },
    **{f"vgg{d}": partial(VGG, depth=d) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": partial(MobileNetV2, width_mult=0.5),
    "ShuffleV1": ShuffleNetV1,
    "ShuffleV2": ShuffleNetV2,
}


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))  # image classifiers only


def zoo_names(*, include_torchvision: bool = False) -> list[str]:  # also list "torchvision:<builder>" names
    """Names `build_model` accepts: the CIFAR zoo, optionally followed by torchvision's classifiers."""
    names = list(_CIFAR_ZOO)
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    return names


def _unknown(kind: str, name: str, choices: list[str], extra: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    close += [c for c in choices if c.lower() == name.lower() and c not in close]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown {kind} '{name}'{hint}; choose one of: {', '.join(choices)}{extra}")


def _build_torchvision(builder: str, num_classes: int, kwargs: dict) -> nn.Module:
    import torchvision

    if "weights" in kwargs or "pretrained" in kwargs:
        raise ConfigError(
            "torchvision models are built with weights=None (the zoo never downloads); "
            "drop `weights`/`pretrained` and load a checkpoint instead"
        )
    choices = _torchvision_names()
    if builder not in choices:
        raise _unknown("torchvision builder", builder, choices)
    model = torchvision.models.get_model(builder, weights=None, num_classes=num_classes, **kwargs)
    model.num_classes = num_classes
    # torchvision ResNet-style stages; other architectures: tap any module path with FeatureTaps
    stages = ("layer1", "layer2", "layer3", "layer4")
    model.feature_names = (*stages, "avgpool") if all(hasattr(model, s) for s in stages) else ()
    return model


def build_model(
    name: str,
    *,
    num_classes: int,  # size of the logits
    **kwargs,
) -> nn.Module:  # passed to the model's constructor (e.g. width_mult for MobileNetV2)
    """A freshly initialised model by zoo name (see `zoo_names()`) or `torchvision:<builder name>`."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if name.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, kwargs)
    if name not in _CIFAR_ZOO:
        raise _unknown(
            "model",
            name,
            list(_CIFAR_ZOO),
            f", or '{TORCHVISION_PREFIX}<builder>' (e.g. torchvision:resnet18)",
        )
    return _CIFAR_ZOO[name](num_classes=num_classes, **kwargs)
