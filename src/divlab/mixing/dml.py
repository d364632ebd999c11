"""The static data-mixing law (Ye et al., "Data Mixing Laws: Optimizing Data Mixtures by Predicting
Language Modeling Performance", 2024), as fitted in Aioli's comparison.

Law (Ye et al. eq. 6; Aioli Sec. 4, "static law"): after a full run on the static mixture p,
    L_i(p) = c_i + b_i * exp(sum_j t_ij p_j)
Fit: train static runs on a Dirichlet cover of the simplex (the same runs as grid search, see
divlab.mixing.grid), fit (c_i, b_i, t_i.) per group by least squares (scipy curve_fit) on their
final validation losses, then minimise the predicted average loss (1/k) sum_i L_i(p) over the
simplex (p = softmax(z), Nelder-Mead from z = 0, as the reference code does) and train on it.
"""

from __future__ import annotations

import numpy as np

from divlab.errors import ConfigError
from divlab.mixing.base import Mixer
from divlab.mixing.grid import dirichlet_cover
from divlab.mixing.runs import mixer_node, run_with
from divlab.utils.io import read_json


def law(P: np.ndarray, c: float, b: float, t: np.ndarray) -> np.ndarray:
    """L(p) = c + b exp(t . p) for each row p of P."""
    return c + b * np.exp(P @ t)


def fit_law(P: np.ndarray, L: np.ndarray) -> list[dict]:
    """(c_i, b_i, t_i) per group i from mixtures P (n, k) and losses L (n, k)."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    n, k = P.shape
    if n < k + 2:
        raise ConfigError(
            f"the mixing law has k + 2 = {k + 2} parameters per group; mixer.points must be at "
            f"least {k + 2}, got {n}."
        )
    fits = []
    for i in range(k):

        def model(P_, c, b, *t):
            return law(P_, c, b, np.asarray(t))

        y = L[:, i]
        p0 = [float(y.min()) * 0.9, float(y.max() - y.min()) + 1e-3] + [-1.0] * k
        with warnings.catch_warnings():  # n = k + 2 points fit exactly: no covariance, which is not used
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(model, P, y, p0=p0, maxfev=100_000)
        fits.append({"c": float(params[0]), "b": float(params[1]), "t": [float(v) for v in params[2:]]})
    return fits


def optimal_mixture(fits: list[dict]) -> np.ndarray:
    """argmin over the simplex of the mean predicted loss (softmax parametrisation, Nelder-Mead)."""
    from scipy.optimize import minimize
    from scipy.special import softmax

    def mean_loss(z):
        p = softmax(z)[None, :]
        return float(np.mean([law(p, f["c"], f["b"], np.asarray(f["t"]))[0] for f in fits]))

    result = minimize(mean_loss, np.zeros(len(fits)), method="Nelder-Mead", options={"maxiter": 10_000})
    return softmax(result.x)


class DataMixingLawMixer(Mixer):
    """Static proportions minimising the fitted static mixing law."""

    name = "dml"

    def __init__(
        self,
        *,
        points: int = 10,  # static runs fitted (a Dirichlet cover, shared with grid search)
        alpha: float = 1.5,  # cover: Dirichlet concentration
        cover_seed: int = 0,  # cover: fixes the points
        oversample: int = 4,  # cover: oversampling before merging
    ) -> None:
        self.points, self.alpha, self.cover_seed, self.oversample = points, alpha, cover_seed, oversample
        self.chosen: list[float] | None = None
        self.record: dict = {}

    def prepare(self, cfg) -> None:
        groups = list(cfg.data.groups)
        P = dirichlet_cover(
            len(groups), self.points, alpha=self.alpha, seed=self.cover_seed, oversample=self.oversample
        )
        L = []
        for point in P:
            run_dir = run_with(
                cfg, mixer_node("static", weights=[float(v) for v in point]), why="mixing-law point"
            )
            metrics = read_json(run_dir / "metrics.json")["metrics"]
            L.append([metrics[f"val/loss/{g}"] for g in groups])
        L = np.asarray(L)
        fits = fit_law(P, L)
        p = optimal_mixture(fits)
        self.chosen = p.tolist()
        self.record = {
            "points": P.tolist(),
            "val_losses": L.tolist(),
            "fits": fits,
            "chosen": self.chosen,
            "predicted_mean_loss": float(
                np.mean([law(p[None], f["c"], f["b"], np.asarray(f["t"]))[0] for f in fits])
            ),
        }

    def initial_proportions(self, k: int) -> np.ndarray:
        if self.chosen is None:
            raise ConfigError(
                "mixer=dml fits its law in prepare(cfg); build the task with divlab.tasks.mix_lm.build."
            )
        return np.asarray(self.chosen)

    def on_train_start(self, trainer, task) -> None:
        super().on_train_start(trainer, task)
        task.write_artifact("mixing_law.json", {"groups": task.groups, **self.record})
