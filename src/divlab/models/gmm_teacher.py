"""The exact denoiser of a Gaussian mixture: an analytic diffusion teacher (no training).

Data p_0 = sum_k w_k N(mu_k, s_k^2 I) in d dimensions. Adding N(0, sigma^2 I) noise gives
p(x; sigma) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I), so with v_k = s_k^2 + sigma^2 and the
posterior responsibilities g_k(x) = w_k N(x; mu_k, v_k I) / p(x; sigma):

    log p(x; sigma) = logsumexp_k [log w_k - d/2 log(2 pi v_k) - |x - mu_k|^2 / (2 v_k)]
    score(x; sigma) = sum_k g_k (mu_k - x) / v_k
    D(x; sigma)     = x + sigma^2 score(x; sigma) = E[x_0 | x]     (Tweedie; EDM eq. 3)

Called like any denoiser, `GMMTeacher(x, sigma)`, so samplers and one-step students use it
unchanged. Parameters are buffers in float64 (computed in float64, returned in x's dtype).
"""

import math

import torch
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.models.edm import as_sigma


class GMMTeacher(nn.Module):
    def __init__(
        self,
        *,
        means,  # (K, d) component means
        stds,  # (K,) isotropic component stds (a scalar is shared by all components)
        weights,
    ):  # (K,) mixture weights (normalised here)
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ConfigError(f"GMMTeacher means must be (K, d), got shape {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0 or (stds < 0).any():
            raise ConfigError("GMMTeacher needs K non-negative weights (not all 0) and K stds >= 0")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("weights", weights / weights.sum())

    @classmethod
    def from_mixture(cls, mixture) -> "GMMTeacher":
        """From a `divlab.data.toy2d.Mixture` (means, std, weights)."""
        return cls(means=mixture.means, stds=mixture.stds, weights=mixture.weights)

    def component_log_probs(self, x: Tensor, sigma) -> Tensor:
        """(B, K) log w_k + log N(x; mu_k, v_k I), float64."""
        x64 = x.to(torch.float64).flatten(1)
        var = self.stds[None, :] ** 2 + as_sigma(sigma, x).to(torch.float64)[:, None] ** 2  # (B, K)
        d = x64.shape[1]
        sq = torch.cdist(x64, self.means) ** 2
        return self.weights.log()[None, :] - 0.5 * d * torch.log(2 * math.pi * var) - sq / (2 * var)

    def log_density(self, x: Tensor, sigma) -> Tensor:
        """(B,) log p(x; sigma) of the noised mixture."""
        return torch.logsumexp(self.component_log_probs(x, sigma), dim=1).to(x.dtype)

    def score(self, x: Tensor, sigma) -> Tensor:
        """grad_x log p(x; sigma), shape of x."""
        x64 = x.to(torch.float64).flatten(1)
        var = self.stds[None, :] ** 2 + as_sigma(sigma, x).to(torch.float64)[:, None] ** 2
        post = torch.softmax(self.component_log_probs(x, sigma), dim=1)  # g_k(x)
        s = ((post / var)[:, :, None] * (self.means[None] - x64[:, None, :])).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def forward(self, x: Tensor, sigma) -> Tensor:
        """D(x; sigma) = x + sigma^2 score(x; sigma)."""
        s = as_sigma(sigma, x).to(torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        return (x.to(torch.float64) + s**2 * self.score(x, sigma).to(torch.float64)).to(x.dtype)
