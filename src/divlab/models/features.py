"""Intermediate features by module name, captured with forward hooks (for feature-based KD such as OFA-KD).

with FeatureTaps(student, ["stage2", "pool"]) as taps:
    logits = student(x)
taps.features["stage2"]          # (B, C, H, W), still attached to the graph

taps = FeatureTaps(student)      # default: the model's `feature_names`; hooks stay until taps.remove()
logits, feats = taps(x)          # one forward, logits and a fresh dict of the tapped outputs
"""

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from divlab.errors import ConfigError


def _available(model: nn.Module) -> str:
    tops = [n for n, _ in model.named_children()]
    known = tuple(getattr(model, "feature_names", ()))
    head = f"feature_names: {', '.join(known)}; " if known else ""
    return (
        f"{head}top-level modules: {', '.join(tops)} (nested modules by dotted path, e.g. "
        f"'{tops[0] if tops else 'layer'}.0'; see model.named_modules())"
    )


class FeatureTaps:
    """Records the output of each named submodule on every forward pass of `model`."""

    def __init__(
        self, model: nn.Module, names: str | Iterable[str] | None = None
    ):  # module paths as in named_modules(); None: model.feature_names
        if names is None:
            names = getattr(model, "feature_names", ())
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ConfigError(
                f"no feature names given and {type(model).__name__} has no feature_names; {_available(model)}"
            )
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules or n == ""]
        if unknown:
            raise ConfigError(
                f"unknown feature name(s) {unknown} for {type(model).__name__}; {_available(model)}"
            )
        self.model = model
        self.names = tuple(names)
        self.features: dict[str, Any] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.features[name] = output

        return hook

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Run the model once; return its output and the features of this pass (the stored dict is cleared)."""
        self.features = {}
        out = self.model(*args, **kwargs)
        feats, self.features = self.features, {}
        return out, feats

    def remove(self) -> None:
        """Detach the hooks and drop the stored tensors."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features = {}

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:  # keep the captured features readable after the block
            h.remove()
        self._handles = []


@torch.no_grad()
def feature_shapes(
    model: nn.Module,
    names: str | Iterable[str] | None = None,  # as for FeatureTaps
    *,
    input_shape: tuple[int, ...] = (3, 32, 32),  # one example, without the batch dimension
) -> dict[str, tuple[int, ...]]:
    """Per-example shape of each named feature, from one eval-mode dry run on zeros (e.g. to size projectors)."""
    param = next(model.parameters(), None)
    x = torch.zeros(
        2,
        *input_shape,
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32,
    )
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, names) as taps:
            model(x)
    finally:
        model.train(was_training)
    return {n: tuple(t.shape[1:]) for n, t in taps.features.items()}


def stage_outputs(model: nn.Module) -> tuple[str, ...]:
    """Every stage output of `model`, in order: zoo models' `stageK` feature_names; else top-level
    children named `stageK` (SmallCNN); else, for a Sequential `net` of Linear/ReLU (MLP), each hidden ReLU."""
    stages = [n for n in getattr(model, "feature_names", ()) if n.startswith("stage")]
    if not stages:
        stages = [n for n, _ in model.named_children() if n.startswith("stage") and n[5:].isdigit()]
    if not stages and isinstance(getattr(model, "net", None), nn.Sequential):
        stages = [f"net.{i}" for i, m in enumerate(model.net) if isinstance(m, nn.ReLU)]
    return tuple(stages)


def default_stages(model: nn.Module) -> tuple[str, ...]:
    """The stages that get stage heads by default (OFA-KD): every stage output but the last, whose
    features already feed the model's own classifier. Empty for a one-hidden-layer MLP."""
    return stage_outputs(model)[:-1]


class StageHead(nn.Sequential):
    """A projector from one intermediate feature to class logits (OFA-KD, Hao et al. 2023, Sec. 3.2).

    Maps (C, H, W): 1x1 conv to `width` channels, then depthwise-separable 3x3 stride-2 blocks until the
    side is at most `out_side` (the side of the student's last stage), global average pool, linear.
    Vectors (C,): Linear(C, width) + ReLU, then linear.
    """

    def __init__(
        self,
        *,
        shape: tuple[int, ...],  # per-example feature shape: (C, H, W) or (C,)
        num_classes: int,  # size of the logits
        width: int,  # channels (or units) of the projector
        out_side: int = 1,
    ):  # downsample maps until their side is <= this
        layers: list[nn.Module] = []
        if len(shape) == 3:
            side = shape[1]
            layers += [nn.Conv2d(shape[0], width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            while side > max(out_side, 1):
                layers += [
                    nn.Conv2d(width, width, 3, 2, 1, groups=width, bias=False),
                    nn.BatchNorm2d(width),
                    nn.Conv2d(width, width, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                side = (side + 1) // 2
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        elif len(shape) == 1:
            layers += [nn.Linear(shape[0], width), nn.ReLU()]
        else:
            raise ConfigError(
                f"a stage head needs a (C, H, W) map or a (C,) vector, got a feature of shape "
                f"{tuple(shape)}; name another module in distill.stages"
            )
        super().__init__(*layers, nn.Linear(width, num_classes))


def head_key(name: str) -> str:
    """ModuleDict key of the head on feature `name` (dots are not allowed in keys)."""
    return name.replace(".", "_")


def build_stage_heads(
    model: nn.Module,
    names: Iterable[str],
    *,
    input_shape: tuple[int, ...],  # one example, e.g. (3, 32, 32)
) -> nn.ModuleDict:
    """One StageHead per named feature of `model`, sized by a dry run (unknown names fail listing the
    available ones). Width and output side: those of the model's last stage, the input of its classifier."""
    names = list(names)
    last = stage_outputs(model)[-1:]
    shapes = feature_shapes(model, [*names, *last], input_shape=input_shape)
    final = shapes[last[0]] if last else (max(s[0] for s in shapes.values()),)
    width, out_side = final[0], (final[1] if len(final) == 3 else 1)
    return nn.ModuleDict(
        {
            head_key(n): StageHead(
                shape=shapes[n], num_classes=model.num_classes, width=width, out_side=out_side
            )
            for n in names
        }
    )
