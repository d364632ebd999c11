"""Divergences between two sets of points, called as d(target_samples, model_samples) with
(N, D) / (M, D) tensors ((N,) means D = 1; a leading batch dim (B, N, D) gives B values).
They serve as diffusion metrics and regularisers; half precision is computed in float32.

- mmd: unbiased MMD^2 with a sum of RBF kernels (Gretton et al. 2012).
- energy_distance: 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo 2013), U- or V-statistic.
- sliced_wasserstein: mean over random directions of the exact 1-D W_p^p (Bonneel et al. 2015).
- cauchy_schwarz: -log (<p,q>^2 / (<p,p><q,q>)) with Parzen (Gaussian kernel) estimates (Principe 2000).
- distance_covariance: dCov^2 (Szekely, Rizzo & Bakirov 2007); sequences of blocks are
  concatenated first, which is CCdCov (Lee et al. 2025, intersectional fairness).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from divlab.errors import ConfigError

from .base import check_int, check_range
from .registry import register
from .sinkhorn import as_samples, pairwise_cost


def _sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return pairwise_cost(x, y, 2.0)


def _dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return pairwise_cost(x, y, 1.0)


def _off_diagonal_mean(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[-1]
    diag = torch.diagonal(k, dim1=-2, dim2=-1).sum(-1)
    return (k.sum((-2, -1)) - diag) / (n * (n - 1))


def _check_dims(name: str, x: torch.Tensor, y: torch.Tensor, *, paired: bool = False) -> None:
    if x.shape[-1] != y.shape[-1] and not paired:
        raise ConfigError(
            f"Divergence {name!r}: samples must share their dimension D, got {x.shape[-1]} and {y.shape[-1]}."
        )
    if x.shape[:-2] != y.shape[:-2]:
        raise ConfigError(
            f"Divergence {name!r}: batch shapes differ, {tuple(x.shape[:-2])} and {tuple(y.shape[:-2])}."
        )


@register("mmd")
class MMD(nn.Module):
    """Unbiased MMD^2 with k(x, y) = sum_s exp(-|x - y|^2 / (2 s^2)) over the bandwidths s."""

    kind = "samples"  # call shape: see divlab.divergences.__init__

    def __init__(
        self,
        *,
        bandwidths: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),  # RBF widths s (same units as the samples)
    ):
        super().__init__()
        bws = [bandwidths] if isinstance(bandwidths, (int, float)) else list(bandwidths)
        if not bws:
            raise ConfigError("Divergence 'mmd': bandwidths must be a non-empty list of positive numbers.")
        self.bandwidths = tuple(check_range(self.name, "bandwidths", s, 0, None, lo_open=True) for s in bws)

    def kernel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d2 = _sqdist(x, y)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in self.bandwidths)

    def forward(self, target_samples, model_samples):
        x, y = as_samples(target_samples), as_samples(model_samples)
        _check_dims(self.name, x, y)
        if x.shape[-2] < 2 or y.shape[-2] < 2:
            raise ConfigError(
                "Divergence 'mmd': the unbiased estimator needs at least 2 samples on each side."
            )
        return (
            _off_diagonal_mean(self.kernel(x, x))
            + _off_diagonal_mean(self.kernel(y, y))
            - 2 * self.kernel(x, y).mean((-2, -1))
        )

    def extra_repr(self) -> str:
        return f"bandwidths={self.bandwidths}"


@register("energy_distance")
class EnergyDistance(nn.Module):
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (squared energy distance); unbiased=False uses the
    V-statistic (diagonal included), equal to scipy.stats.energy_distance(...)**2 in 1-D."""

    kind = "samples"  # call shape: see divlab.divergences.__init__

    def __init__(
        self,
        *,
        unbiased: bool = True,  # U-statistic within each sample (excludes i == j)
    ):
        super().__init__()
        self.unbiased = bool(unbiased)

    def forward(self, target_samples, model_samples):
        x, y = as_samples(target_samples), as_samples(model_samples)
        _check_dims(self.name, x, y)
        within = _off_diagonal_mean if self.unbiased else (lambda d: d.mean((-2, -1)))
        return 2 * _dist(x, y).mean((-2, -1)) - within(_dist(x, x)) - within(_dist(y, y))

    def extra_repr(self) -> str:
        return f"unbiased={self.unbiased}"


def wasserstein_1d(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """Exact W_p^p between uniform empirical measures on the last dim: (..., N), (..., M) -> (...)."""
    n, m = x.shape[-1], y.shape[-1]
    xs, _ = torch.sort(x, dim=-1)
    ys, _ = torch.sort(y, dim=-1)
    # merge the two quantile grids: on each piece (t_{k-1}, t_k] both quantile functions are constant
    grid = torch.cat(
        [
            torch.arange(1, n + 1, dtype=x.dtype, device=x.device) / n,
            torch.arange(1, m + 1, dtype=x.dtype, device=x.device) / m,
        ]
    )
    t, _ = torch.sort(grid)
    width = torch.diff(t, prepend=t.new_zeros(1))
    mid = t - width / 2
    ix = torch.clamp((mid * n).long(), max=n - 1)
    iy = torch.clamp((mid * m).long(), max=m - 1)
    diff = (xs.index_select(-1, ix) - ys.index_select(-1, iy)).abs()
    return (width * diff**p).sum(-1)


@register("sliced_wasserstein")
class SlicedWasserstein(nn.Module):
    """SW_p^p = E_theta W_p^p(theta#P, theta#Q) over directions uniform on the sphere
    (no p-th root); in 1-D it is the exact W_p^p."""

    kind = "samples"  # call shape: see divlab.divergences.__init__

    def __init__(
        self,
        *,
        num_projections: int = 128,  # random directions per call
        p: float = 2.0,  # order p >= 1
        seed: int | None = None,  # fixed directions (same every call) when set; fresh ones when None
    ):
        super().__init__()
        self.num_projections = check_int(self.name, "num_projections", num_projections)
        self.p = check_range(self.name, "p", p, 1, None)
        self.seed = None if seed is None else check_int(self.name, "seed", seed, lo=0)

    def forward(self, target_samples, model_samples):
        x, y = as_samples(target_samples), as_samples(model_samples)
        _check_dims(self.name, x, y)
        d = x.shape[-1]
        if d == 1:
            theta = torch.ones(1, 1, dtype=x.dtype, device=x.device)
        else:
            gen = None
            if self.seed is not None:
                gen = torch.Generator(device=x.device).manual_seed(self.seed)
            theta = torch.randn(d, self.num_projections, generator=gen, dtype=x.dtype, device=x.device)
            theta = theta / theta.norm(dim=0, keepdim=True)
        px = (x @ theta).transpose(-1, -2)  # (..., L, N)
        py = (y @ theta).transpose(-1, -2)
        return wasserstein_1d(px, py, self.p).mean(-1)

    def extra_repr(self) -> str:
        return f"num_projections={self.num_projections}, p={self.p}, seed={self.seed}"


@register("cauchy_schwarz")
class CauchySchwarz(nn.Module):
    """D_CS = log <p,p> + log <q,q> - 2 log <p,q> with Parzen estimates <p,q> ~ mean_ij k(x_i, y_j),
    k = exp(-|x - y|^2 / (2 sigma^2)) (V-statistics, so D_CS >= 0); symmetric, scale-invariant."""

    kind = "samples"  # call shape: see divlab.divergences.__init__

    def __init__(
        self,
        *,
        sigma: float = 1.0,  # Gaussian kernel width, same units as the samples
    ):
        super().__init__()
        self.sigma = check_range(self.name, "sigma", sigma, 0, None, lo_open=True)

    def _log_mean_kernel(self, x, y):
        logk = -_sqdist(x, y) / (2 * self.sigma**2)
        return torch.logsumexp(logk.flatten(-2), dim=-1) - math.log(x.shape[-2] * y.shape[-2])

    def forward(self, target_samples, model_samples):
        x, y = as_samples(target_samples), as_samples(model_samples)
        _check_dims(self.name, x, y)
        return self._log_mean_kernel(x, x) + self._log_mean_kernel(y, y) - 2 * self._log_mean_kernel(x, y)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def _centered(d: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Double-centred (V) or U-centred (Szekely & Rizzo 2014) distance matrix."""
    n = d.shape[-1]
    if not unbiased:
        return d - d.mean(-1, keepdim=True) - d.mean(-2, keepdim=True) + d.mean((-2, -1), keepdim=True)
    row = d.sum(-1, keepdim=True) / (n - 2)
    col = d.sum(-2, keepdim=True) / (n - 2)
    tot = d.sum((-2, -1), keepdim=True) / ((n - 1) * (n - 2))
    eye = torch.eye(n, dtype=torch.bool, device=d.device)
    return torch.where(eye, torch.zeros_like(d), d - row - col + tot)


def _blocks(name: str, z) -> torch.Tensor:
    if isinstance(z, (list, tuple)):
        parts = [as_samples(torch.as_tensor(b)) for b in z]
        if not parts:
            raise ConfigError(f"Divergence {name!r}: an empty list of blocks was given.")
        return torch.cat([p.to(parts[0].dtype) for p in parts], dim=-1)
    return as_samples(z)


@register("distance_covariance")
class DistanceCovariance(nn.Module):
    """dCov^2(X, Y) of paired samples (N, Dx), (N, Dy); zero iff independent (in population).

    Pass a list of blocks for either argument (e.g. several protected attributes) to get the
    concatenated CCdCov = dCov^2([X_1, ..., X_p], [Y_1, ..., Y_q]). normalized=True returns the
    squared distance correlation dCor^2 in [0, 1] instead.
    """

    kind = "samples"  # call shape: see divlab.divergences.__init__

    def __init__(
        self,
        *,
        unbiased: bool = False,  # U-centred unbiased estimator (Szekely & Rizzo 2014) instead of the V-statistic
        normalized: bool = False,  # dCor^2 = dCov^2(X, Y) / sqrt(dCov^2(X, X) dCov^2(Y, Y))
    ):
        super().__init__()
        self.unbiased = bool(unbiased)
        self.normalized = bool(normalized)

    def _dcov2(self, a, b):
        n = a.shape[-1]
        denom = n * (n - 3) if self.unbiased else n * n
        return (a * b).sum((-2, -1)) / denom

    def forward(self, target_samples, model_samples):
        x, y = _blocks(self.name, target_samples), _blocks(self.name, model_samples)
        _check_dims(self.name, x, y, paired=True)
        if x.shape[-2] != y.shape[-2]:
            raise ConfigError(
                f"Divergence {self.name!r}: samples must be paired (same N), got {x.shape[-2]} and {y.shape[-2]}."
            )
        if self.unbiased and x.shape[-2] < 4:
            raise ConfigError(f"Divergence {self.name!r}: the unbiased estimator needs N >= 4 samples.")
        a, b = _centered(_dist(x, x), self.unbiased), _centered(_dist(y, y), self.unbiased)
        value = self._dcov2(a, b)
        if self.normalized:
            value = value / torch.sqrt(self._dcov2(a, a) * self._dcov2(b, b)).clamp(
                min=torch.finfo(value.dtype).tiny
            )
        return value

    def extra_repr(self) -> str:
        return f"unbiased={self.unbiased}, normalized={self.normalized}"
