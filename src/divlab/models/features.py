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
    return (f"{head}top-level modules: {', '.join(tops)} (nested modules by dotted path, e.g. "
            f"'{tops[0] if tops else 'layer'}.0'; see model.named_modules())")


class FeatureTaps:
    """Records the output of each named submodule on every forward pass of `model`."""

    def __init__(self, model: nn.Module,
                 names: str | Iterable[str] | None = None):  # module paths as in named_modules(); None: model.feature_names
        if names is None:
            names = getattr(model, "feature_names", ())
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ConfigError(f"no feature names given and {type(model).__name__} has no feature_names; "
                              f"{_available(model)}")
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules or n == ""]
        if unknown:
            raise ConfigError(f"unknown feature name(s) {unknown} for {type(model).__name__}; {_available(model)}")
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
def feature_shapes(model: nn.Module,
                   names: str | Iterable[str] | None = None,  # as for FeatureTaps
                   *,
                   input_shape: tuple[int, ...] = (3, 32, 32),  # one example, without the batch dimension
                   ) -> dict[str, tuple[int, ...]]:
    """Per-example shape of each named feature, from one eval-mode dry run on zeros (e.g. to size projectors)."""
    param = next(model.parameters(), None)
    x = torch.zeros(2, *input_shape, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, names) as taps:
            model(x)
    finally:
        model.train(was_training)
    return {n: tuple(t.shape[1:]) for n, t in taps.features.items()}
