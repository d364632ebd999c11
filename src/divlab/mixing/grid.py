"""Grid search over static mixtures: train one static run per point of a Dirichlet cover of the
simplex, keep the point with the lowest average validation loss, and train on it.

The cover (Aioli's sweeps, `dirichlet_cover.py` of the reference code, described here in words):
draw n * 2^oversample points from Dirichlet(alpha), then repeatedly replace the two closest points
(Euclidean) by their midpoint until n remain; so the points spread over the simplex instead of
clumping. The cover depends on (k, n, alpha, cover_seed) only, not on the run's seed, so every
method and seed sweeps the same points.

As a sweep: every point is an ordinary `mixer=static mixer.weights=[...]` run (see
divlab.mixing.runs); `python -m divlab.mixing.grid k=3 n=6` prints the points, and
`divlab -m experiment=mixing/static "mixer.weights=[...],[...]"` runs them by hand.
"""

from __future__ import annotations

import sys

import numpy as np

from divlab.errors import ConfigError
from divlab.mixing.base import Mixer
from divlab.mixing.runs import mixer_node, run_with
from divlab.utils.io import read_json


def dirichlet_cover(k: int, n: int, *, alpha: float = 1.5, seed: int = 0, oversample: int = 4) -> np.ndarray:
    """n points (n, k) on the simplex covering it evenly; rows rounded to 4 decimals, summing to 1."""
    from scipy.spatial.distance import pdist, squareform

    if k < 2 or n < 1:
        raise ConfigError(f"a Dirichlet cover needs k >= 2 groups and n >= 1 points, got k={k}, n={n}.")
    points = np.random.default_rng(seed).dirichlet(np.full(k, alpha), size=n * (1 << oversample))
    while len(points) > n:
        dist = squareform(pdist(points))
        np.fill_diagonal(dist, np.inf)
        a, b = np.unravel_index(np.argmin(dist), dist.shape)
        merged = (points[a] + points[b]) / 2
        points = np.vstack([np.delete(points, [a, b], axis=0), merged])
    points = np.round(points, 4)
    points[:, -1] = np.round(1.0 - points[:, :-1].sum(axis=1), 4)
    order = np.lexsort(points.T[::-1])  # a fixed order: by first coordinate, then the next
    return points[order]


class GridSearchMixer(Mixer):
    """Static proportions = the best point of a Dirichlet cover (by average validation loss)."""

    name = "grid"

    def __init__(
        self,
        *,
        points: int = 10,  # size of the cover
        alpha: float = 1.5,  # Dirichlet concentration of the oversampled points
        cover_seed: int = 0,  # fixes the cover (not the runs' seed)
        oversample: int = 4,  # draw points * 2^oversample before merging
    ) -> None:
        self.points, self.alpha, self.cover_seed, self.oversample = points, alpha, cover_seed, oversample
        self.chosen: list[float] | None = None
        self.sweep: list[dict] = []

    def prepare(self, cfg) -> None:
        k = len(cfg.data.groups)
        cover = dirichlet_cover(
            k, self.points, alpha=self.alpha, seed=self.cover_seed, oversample=self.oversample
        )
        for point in cover:
            run_dir = run_with(cfg, mixer_node("static", weights=[float(v) for v in point]), why="grid point")
            metrics = read_json(run_dir / "metrics.json")["metrics"]
            self.sweep.append(
                {
                    "weights": [float(v) for v in point],
                    "run_dir": str(run_dir),
                    "val/avg_loss": metrics["val/avg_loss"],
                    "test/avg_ppl": metrics.get("test/avg_ppl"),
                }
            )
        best = min(self.sweep, key=lambda r: r["val/avg_loss"])
        self.chosen = best["weights"]

    def initial_proportions(self, k: int) -> np.ndarray:
        if self.chosen is None:
            raise ConfigError(
                "mixer=grid chooses its proportions in prepare(cfg); build the task with "
                "divlab.tasks.mix_lm.build."
            )
        return np.asarray(self.chosen)

    def on_train_start(self, trainer, task) -> None:
        super().on_train_start(trainer, task)
        task.write_artifact("grid.json", {"groups": task.groups, "sweep": self.sweep, "chosen": self.chosen})


if __name__ == "__main__":
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    for row in dirichlet_cover(
        int(args.get("k", 3)),
        int(args.get("n", 6)),
        alpha=float(args.get("alpha", 1.5)),
        seed=int(args.get("seed", 0)),
    ):
        print("[" + ",".join(f"{v:.4f}" for v in row) + "]")
