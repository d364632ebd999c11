"""EDM (Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): preconditioning, training noise distribution, loss weight, time steps and
the Euler / Heun (2nd order) samplers of the probability-flow ODE.

Notation: x_sigma = x_0 + sigma * n, n ~ N(0, I); D(x; sigma) estimates E[x_0 | x_sigma];
the score of the noised data is grad log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (eq. 3).

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))    (eq. 7, Table 1)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4
    loss    = lambda(sigma) |D(x_0 + sigma n; sigma) - x_0|^2,
              lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,  ln sigma ~ N(P_mean, P_std^2)
    steps   sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
              sigma_N = 0                                                          (eq. 5)

A *denoiser* here is anything called as `D(x, sigma) -> denoised x` with sigma a tensor of shape
(B,) (or a scalar): `EDMPrecond`, the analytic `GMMTeacher`, a one-step student's fake score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from divlab.errors import ConfigError

__all__ = [
    "EDMPrecond",
    "EDMLoss",
    "c_skip",
    "c_out",
    "c_in",
    "c_noise",
    "edm_loss_weight",
    "sample_sigma",
    "score_from_denoiser",
    "karras_sigmas",
    "euler_sampler",
    "heun_sampler",
    "sample",
    "sampler_nfe",
    "SIGMA_MIN",
    "SIGMA_MAX",
    "RHO",
    "P_MEAN",
    "P_STD",
]

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0  # Table 1, "EDM" column
P_MEAN, P_STD = -1.2, 1.2  # Table 1, training: ln sigma ~ N(P_mean, P_std^2)

Denoiser = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- preconditioning


def c_skip(sigma: Tensor, sigma_data: float) -> Tensor:
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Tensor, sigma_data: float) -> Tensor:
    return sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


def c_in(sigma: Tensor, sigma_data: float) -> Tensor:
    return 1.0 / torch.sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma: Tensor) -> Tensor:
    return torch.log(sigma) / 4.0


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2 (Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def as_sigma(sigma, x: Tensor) -> Tensor:
    """sigma as a (B,) tensor on x's device and dtype (a float or 0-dim tensor is broadcast)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(x.shape[0])


def expand_as(sigma: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out net(c_in x, c_noise) around a raw network `net(x, c_noise)`; class labels,
    when given, go on to a class-conditional net as `net(c_in x, c_noise, class_labels)`."""

    def __init__(
        self, net: nn.Module, *, sigma_data: float
    ):  # std of the data (per coordinate), e.g. 0.5 for images in [-1, 1]
        super().__init__()
        if not sigma_data > 0:
            raise ConfigError(f"sigma_data must be > 0, got {sigma_data!r}; set the data config's sigma_data")
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma, class_labels: Tensor | None = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        s = expand_as(sigma, x)
        labels = () if class_labels is None else (class_labels,)
        f = self.net(c_in(s, self.sigma_data) * x, c_noise(sigma), *labels)
        return c_skip(s, self.sigma_data) * x + c_out(s, self.sigma_data) * f

    def features(self, x: Tensor, sigma, class_labels: Tensor | None = None) -> Tensor:
        """The raw network's hidden features at (x, sigma) (for discriminator heads); needs net.features."""
        sigma = as_sigma(sigma, x)
        labels = () if class_labels is None else (class_labels,)
        return self.net.features(c_in(expand_as(sigma, x), self.sigma_data) * x, c_noise(sigma), *labels)


def sample_sigma(
    n: int, *, p_mean: float = P_MEAN, p_std: float = P_STD, generator=None, device=None, dtype=torch.float32
) -> Tensor:
    """(n,) noise levels with ln sigma ~ N(p_mean, p_std^2) (Table 1, training)."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=generator, device=device, dtype=dtype))


def score_from_denoiser(denoised: Tensor, x: Tensor, sigma) -> Tensor:
    """grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (eq. 3)."""
    return (denoised - x) / expand_as(as_sigma(sigma, x), x) ** 2


class EDMLoss:
    """Denoising score matching with the EDM weighting: per-example lambda(sigma) |D(x + sigma n; sigma) - x|^2
    averaged over the non-batch dims (so a 2-D point and an image get comparable scales)."""

    def __init__(
        self,
        *,
        sigma_data: float,  # as in EDMPrecond
        p_mean: float = P_MEAN,  # ln sigma ~ N(p_mean, p_std^2)
        p_std: float = P_STD,
    ):
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)

    def __call__(self, denoiser: Denoiser, x0: Tensor, *, sigma: Tensor | None = None) -> Tensor:
        if sigma is None:
            sigma = sample_sigma(
                x0.shape[0], p_mean=self.p_mean, p_std=self.p_std, device=x0.device, dtype=x0.dtype
            )
        noisy = x0 + expand_as(sigma, x0) * torch.randn_like(x0)
        err = (denoiser(noisy, sigma) - x0) ** 2
        return edm_loss_weight(sigma, self.sigma_data) * err.flatten(1).mean(1)


# ----------------------------------------------------------------------------- sampling


def karras_sigmas(
    num_steps: int,
    *,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    device=None,
    dtype=torch.float64,
) -> Tensor:
    """(num_steps + 1,) noise levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then sigma_N = 0
    (eq. 5); with one step the only level is sigma_max."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"the number of sampling steps must be an integer >= 1, got {num_steps!r}")
    if num_steps == 1:
        steps = torch.tensor([sigma_max], device=device, dtype=dtype)
    else:
        i = torch.arange(num_steps, device=device, dtype=dtype)
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        steps = (a + i / (num_steps - 1) * (b - a)) ** rho
    return torch.cat([steps, steps.new_zeros(1)])


def sampler_nfe(method: str, num_steps: int) -> int:
    """Denoiser evaluations: Euler uses one per step; Heun two, except the last step to sigma = 0 (Alg. 1)."""
    if method == "euler":
        return num_steps
    if method == "heun":
        return 2 * num_steps - 1
    raise ConfigError(f"sampler method must be euler or heun, got {method!r}")


@torch.no_grad()
def euler_sampler(
    denoiser: Denoiser,
    latents: Tensor,
    *,
    num_steps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> Tensor:
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from x = sigma_max * latents.
    One step is x = D(sigma_max z; sigma_max)."""
    sigmas = karras_sigmas(
        num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=latents.device
    )
    x = latents.to(torch.float64) * sigmas[0]
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x.to(latents.dtype), s_cur.to(latents.dtype)).to(torch.float64)) / s_cur
        x = x + (s_next - s_cur) * d
    return x.to(latents.dtype)


@torch.no_grad()
def heun_sampler(
    denoiser: Denoiser,
    latents: Tensor,
    *,
    num_steps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> Tensor:
    """Deterministic 2nd-order Heun sampler (Alg. 1, S_churn = 0): 2 N - 1 denoiser evaluations."""
    sigmas = karras_sigmas(
        num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=latents.device
    )
    dt = latents.dtype
    x = latents.to(torch.float64) * sigmas[0]
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x.to(dt), s_cur.to(dt)).to(torch.float64)) / s_cur
        x_next = x + (s_next - s_cur) * d
        if s_next > 0:  # 2nd-order correction (Alg. 1, lines 9-11)
            d_next = (x_next - denoiser(x_next.to(dt), s_next.to(dt)).to(torch.float64)) / s_next
            x_next = x + (s_next - s_cur) * (d + d_next) / 2
        x = x_next
    return x.to(dt)


def sample(
    denoiser: Denoiser, latents: Tensor, *, method: str = "heun", num_steps: int = 18, **schedule
) -> Tensor:
    """euler_sampler or heun_sampler by name."""
    sampler_nfe(method, num_steps)
    fn = euler_sampler if method == "euler" else heun_sampler
    return fn(denoiser, latents, num_steps=num_steps, **schedule)
