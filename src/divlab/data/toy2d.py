"""Seeded 2-D toy distributions for diffusion and one-step distillation, and their LightningDataModule.

- ring8:     8 Gaussians on a circle of radius 2, std 0.1, equal weights.
- grid25:    25 Gaussians on the grid {-2, -1, 0, 1, 2}^2, std 0.1, unequal weights w_k ~ 1 + (k mod 4)
             (k = 5 i + j), so the lightest mode holds 1/61 = 1.6% of the mass (above the 1%
             coverage threshold of divlab.metrics.generative).
- swissroll: scikit-learn's swiss roll, coordinates (x, z) / 5, noise 0.25 before scaling.
- moons:     scikit-learn's two moons, noise 0.05, centred and scaled by 1.5.

The mixtures expose their parameters (`Mixture`: means, stds, weights) for the analytic teacher
(divlab.models.gmm_teacher) and the mode metrics. Every sample comes with a label: the mixture
component, the moon, or the half of the swiss roll (roll angle below / above its midpoint), and
`subset=[labels]` keeps only those labels (a mixture is then restricted and renormalised), so
two models can be trained on disjoint parts (SuperDiff).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import TensorDataset

from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.errors import ConfigError

DATASETS = ("ring8", "grid25", "swissroll", "moons")
NUM_LABELS = {"ring8": 8, "grid25": 25, "swissroll": 2, "moons": 2}


@dataclass(frozen=True)
class Mixture:
    """sum_k weights_k N(means_k, stds_k^2 I); float64 tensors (K, d), (K,), (K,)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, d) float32, component labels (n,) long)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[labels] + self.stds[labels, None] * noise
        return x.float(), labels

    def restrict(self, components) -> Mixture:
        idx = torch.as_tensor(sorted(components), dtype=torch.long)
        w = self.weights[idx]
        return Mixture(self.means[idx], self.stds[idx], w / w.sum())

    def coordinate_std(self) -> float:
        """sqrt of the mean per-coordinate variance of the mixture (a natural sigma_data)."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None] * (self.means**2 + self.stds[:, None] ** 2)).sum(0)
        return float((second - mean**2).mean().sqrt())


def ring8_mixture(*, radius: float = 2.0, std: float = 0.1) -> Mixture:
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return Mixture(
        means, torch.full((8,), std, dtype=torch.float64), torch.full((8,), 1 / 8, dtype=torch.float64)
    )


def grid25_mixture(*, spacing: float = 1.0, std: float = 0.1) -> Mixture:
    coords = (torch.arange(5, dtype=torch.float64) - 2) * spacing
    means = torch.cartesian_prod(coords, coords)  # k = 5 i + j
    w = 1.0 + torch.arange(25, dtype=torch.float64) % 4
    return Mixture(means, torch.full((25,), std, dtype=torch.float64), w / w.sum())


MIXTURES = {"ring8": ring8_mixture, "grid25": grid25_mixture}


def mixture_of(name: str) -> Mixture | None:
    return MIXTURES[name]() if name in MIXTURES else None


def _swissroll(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_swiss_roll

    x, t = make_swiss_roll(n, noise=0.25, random_state=rng)
    mid = 1.5 * math.pi * (1 + 2 * 0.5)  # t is uniform in 1.5 pi [1, 3]
    return x[:, [0, 2]] / 5.0, (t > mid).astype(np.int64)


def _moons(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=rng)
    return (x - np.array([0.5, 0.25])) * 1.5, y.astype(np.int64)


def sample_toy2d(name: str, n: int, *, seed: int, subset=None) -> tuple[torch.Tensor, torch.Tensor]:
    """n points (float32 (n, 2)) and their labels, a deterministic function of (name, n, seed, subset)."""
    if name not in DATASETS:
        raise ConfigError(
            f"data.datamodule.dataset={name!r} is not a 2-D toy set; choose one of {', '.join(DATASETS)}"
        )
    subset = check_subset(name, subset)
    mixture = mixture_of(name)
    if mixture is not None:
        if subset is not None:
            mixture = mixture.restrict(subset)
        x, local = mixture.sample(n, generator=torch.Generator().manual_seed(seed))
        labels = local if subset is None else torch.as_tensor(subset)[local]
        return x, labels
    rng = np.random.RandomState(seed)
    draw = _swissroll if name == "swissroll" else _moons
    xs, ys, have = [], [], 0
    while have < n:  # rejection on the labels for subsets
        x, y = draw(max(2 * n, 64), rng)
        keep = np.ones(len(y), bool) if subset is None else np.isin(y, subset)
        xs.append(x[keep]), ys.append(y[keep])
        have += int(keep.sum())
    x, y = np.concatenate(xs)[:n], np.concatenate(ys)[:n]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def check_subset(name: str, subset):
    if subset is None:
        return None
    labels = sorted({int(s) for s in subset})
    if not labels or labels[0] < 0 or labels[-1] >= NUM_LABELS[name]:
        raise ConfigError(
            f"data.datamodule.subset must list labels in [0, {NUM_LABELS[name] - 1}] for "
            f"{name}, got {list(subset)!r}"
        )
    return labels


class Toy2DDataModule(pl.LightningDataModule):
    """Train/val/test point sets of one 2-D toy distribution, drawn with seeds data_seed, +1, +2."""

    augmented = False

    def __init__(
        self,
        *,
        dataset: str,  # ring8 | grid25 | swissroll | moons
        n_train: int = 32768,  # training points (fixed set)
        n_val: int = 2048,  # validation points
        n_test: int = 2048,  # test points (reference set of the sample metrics)
        batch_size: int = 512,  # per process
        subset: list[int] | None = None,  # keep only these labels (components / moons / roll halves)
        data_seed: int = 0,  # fixes the point sets
        seed: int = 0,  # fixes the batch order
        num_workers: int = 0,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(
                f"data.datamodule.dataset={dataset!r} is not a 2-D toy set; choose one of "
                f"{', '.join(DATASETS)}"
            )
        for key, value in (
            ("n_train", n_train),
            ("n_val", n_val),
            ("n_test", n_test),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, int) or value < 2:
                raise ConfigError(f"data.datamodule.{key} must be an integer >= 2, got {value!r}")
        self.dataset, self.subset = dataset, check_subset(dataset, subset)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.batch_size, self.data_seed, self.seed, self.num_workers = (
            batch_size,
            data_seed,
            seed,
            num_workers,
        )
        self.num_classes, self.input_shape = NUM_LABELS[dataset], (2,)
        self._splits = None

    @property
    def mixture(self) -> Mixture | None:
        """The distribution the points are drawn from when it is a Gaussian mixture (restricted to `subset`)."""
        m = mixture_of(self.dataset)
        return m.restrict(self.subset) if m is not None and self.subset is not None else m

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        self._splits = {
            split: TensorDataset(
                *sample_toy2d(self.dataset, n, seed=self.data_seed * 3 + i, subset=self.subset)
            )
            for i, (split, n) in enumerate(self.sizes.items())
        }

    def points(self, split: str) -> torch.Tensor:
        self.setup()
        return self._splits[split].tensors[0]

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader
