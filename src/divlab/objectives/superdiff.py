"""SuperDiff: superposing diffusion models at sampling time, with the Ito density estimator.

Skreta, Atanackovic, Bose, Tong & Neklyudov 2025, "The Superposition of Diffusion Models Using the
Ito Density Estimator" (ICLR 2025, arXiv:2412.17762). The labels (S1)-(S7) below are this file's; the
paper's named results they implement are given beside them (its equation numbers could not be
checked offline, so none are quoted).

Setting: a variance-exploding diffusion with the EDM schedule sigma(t) = t (Karras et al. 2022),

    forward   dx = g(t) dW,        g(t)^2 = d sigma^2 / dt = 2 t                              (S1)

so q_t = p_data * N(0, sigma(t)^2 I), and each model i gives a score s_i(x, sigma) ~ grad log q^i_t,
read off its denoiser D_i by s_i = (D_i(x; sigma) - x) / sigma^2 (EDM eq. 3). Sampling runs the
reverse SDE in tau = T - t with any drift built from the models' scores and the *same* noise g:

    dx_tau = g^2 u_tau(x) dtau + g dW_tau,     u = sum_i kappa_i s_i,  sum_i kappa_i = 1      (S2)

(paper: the superposed vector field sum_i kappa_i u^i_t, its Proposition on mixtures of densities).

Ito density estimator (paper: the "Ito density estimator" theorem; there with drift f, here f = 0).
Derivation for (S1)-(S2). The Fokker-Planck equation of (S1) is d_t q = (g^2/2) Lap q, so

    d_t log q_t = (g^2/2) (Lap log q_t + |grad log q_t|^2).

Along a path of (S2), with t = T - tau, Ito's formula for the function (tau, x) -> log q_{T-tau}(x) is

    d log q(x_tau) = -d_t log q dtau + <grad log q, dx_tau> + (g^2/2) Lap log q dtau

(the last term is the Ito correction, 1/2 tr(g^2 I Hess log q) dtau). The two Laplacians cancel:

    d log q^i_{T-tau}(x_tau) = <dx_tau, s_i(x_tau)> - (g^2/2) |s_i(x_tau)|^2 dtau            (S3)

No divergence of the score network is needed, and (S3) holds for *any* drift u in (S2), so every
model's log-density can be tracked along one superposed path. It needs the noise of the path to be
exactly g dW (a probability-flow ODE path would need the divergence again).

Discretisation (Euler-Maruyama, left point, as Ito integrals require). Levels sigma_0 = sigma_max >
... > sigma_N = sigma_min from the Karras schedule; over one step h = integral g^2 dtau =
sigma_k^2 - sigma_{k+1}^2 exactly, and

    dx = h u(x_k) + sqrt(h) z,  z ~ N(0, I);   l_i += <dx, s_i(x_k)> - (h/2) |s_i(x_k)|^2     (S4)

with l_i(x_0) started at log N(x_0; 0, sigma_max^2 I) for every model (both models' q at sigma_max are
that Gaussian up to O(data scale / sigma_max)), or at exact values when a caller has them.

OR (paper: superposition as a mixture, p ~ sum_i w_i q^i): the mixture's score is
sum_i kappa_i s_i with kappa_i = w_i q^i / sum_j w_j q^j; with a temperature T (T = 1: the mixture,
T -> infinity: the model with the highest density wins)

    kappa = softmax_i(T l_i + log w_i)                                                         (S5)

AND (paper: equal densities, kappa solving d log q^i = d log q^j, linear in kappa). For two models,
insert dx of (S4) (with its already drawn z) into l_1 - l_2 and set the increment to zero; with
delta = s_1 - s_2 and (|s_1|^2 - |s_2|^2)/2 - <s_2, delta> = |delta|^2 / 2 this gives

    kappa_1 = 1/2 - <z, delta> / (sqrt(h) |delta|^2),   kappa_2 = 1 - kappa_1                 (S6)

kappa is not confined to [0, 1]: the step becomes dx = h (s_1 + s_2)/2 + sqrt(h) (z - <z, e> e) with
e = delta / |delta|, i.e. AND removes the noise along the direction in which the two log-densities
would separate. Where delta = 0 (the models agree) every kappa satisfies the constraint and 1/2 is used.

Baseline: kappa = (1/2, 1/2), the plain average of the two scores                            (S7)
(fixed kappa = one-hot gives each model alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from divlab.errors import ConfigError
from divlab.models.edm import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas

Denoiser = Callable[[Tensor, Tensor], Tensor]  # D(x, sigma) -> E[x_0 | x]; sigma of shape (B,)

RULES = ("fixed", "or", "and")


@dataclass
class SuperDiffResult:
    x: Tensor  # (B, d) samples at sigma_min, float64
    log_q: Tensor  # (K, B) tracked log q^i_{sigma_min}(x) by the Ito estimator (S4)
    kappa_mean: Tensor  # (K,) mean kappa over steps and samples (unbounded for AND: see (S6))
    kappa_outside: float  # fraction of (step, sample) pairs with some kappa_i outside [0, 1]
    kappa_last: Tensor  # (K, B) kappa of the last step
    sigmas: Tensor  # (N + 1,) the noise levels walked, sigma_max ... sigma_min
    nfe: int  # denoiser evaluations (all models together)
    path: list | None = None  # with record_path: [(sigma, x (B, d), log_q (K, B)), ...] at every level


def scores(denoisers: Sequence[Denoiser], x: Tensor, sigma: Tensor) -> Tensor:
    """(K, B, d) s_i = (D_i(x; sigma) - x) / sigma^2 (EDM eq. 3), each denoiser called in its dtype,
    the result in x's dtype."""
    out = []
    for denoise in denoisers:
        dtype = model_dtype(denoise, x.dtype)
        sig = sigma.expand(x.shape[0]).to(dtype)
        d = denoise(x.to(dtype), sig).to(x.dtype)
        out.append((d - x) / sigma.to(x.dtype) ** 2)
    return torch.stack(out)


def model_dtype(denoise, default: torch.dtype) -> torch.dtype:
    """float32 for a network with float32 parameters, else the caller's dtype (analytic models)."""
    params = getattr(denoise, "parameters", None)
    if params is not None:
        for p in params():
            return p.dtype
    return default


def ito_increment(dx: Tensor, score: Tensor, h: Tensor) -> Tensor:
    """(S3)/(S4): d log q = <dx, s> - (h / 2) |s|^2 per sample; dx, score (..., B, d), h = g^2 dtau."""
    return (dx * score).sum(-1) - 0.5 * h * (score**2).sum(-1)


def or_kappa(log_q: Tensor, *, temperature: float, log_weights: Tensor) -> Tensor:
    """(S5): (K, B) softmax over models of T log q_i + log w_i."""
    return torch.softmax(temperature * log_q + log_weights[:, None], dim=0)


def and_kappa(s: Tensor, z: Tensor, h: Tensor) -> Tensor:
    """(S6): (2, B) kappa giving both models the same Ito log-density increment for this step's noise z."""
    if s.shape[0] != 2:
        raise ConfigError(
            f"the AND sampler has a closed form for two models, got {s.shape[0]}; give superpose two models"
        )
    delta = s[0] - s[1]
    norm2 = (delta**2).sum(-1)
    agree = norm2 <= torch.finfo(norm2.dtype).tiny  # identical scores: any kappa works
    k1 = 0.5 - (z * delta).sum(-1) / (h.sqrt() * torch.where(agree, torch.ones_like(norm2), norm2))
    k1 = torch.where(agree, torch.full_like(k1, 0.5), k1)
    return torch.stack([k1, 1.0 - k1])


def gaussian_log_density(x: Tensor, sigma: float) -> Tensor:
    """(B,) log N(x; 0, sigma^2 I): the start value of every tracked log-density."""
    d = x.shape[-1]
    return -0.5 * (x**2).sum(-1) / sigma**2 - 0.5 * d * math.log(2 * math.pi * sigma**2)


@torch.no_grad()
def superdiff_sample(
    denoisers: Sequence[Denoiser],
    latents: Tensor,
    *,
    rule: str,  # fixed | or | and
    num_steps: int = 200,  # Euler-Maruyama steps sigma_max -> sigma_min
    sigma_min: float = SIGMA_MIN,  # last noise level (samples are returned there)
    sigma_max: float = SIGMA_MAX,  # first noise level; x_0 = sigma_max * latents
    rho: float = RHO,  # Karras schedule exponent
    kappa: Sequence[float] | None = None,  # rule=fixed: the K weights (sum 1)
    temperature: float = 1.0,  # rule=or: T in (S5)
    weights: Sequence[float] | None = None,  # rule=or: mixture weights w (default 1/K)
    log_q_init: Tensor | None = None,  # (K, B) start values; default log N(x_0; 0, sigma_max^2)
    generator: torch.Generator | None = None,  # the path noise
    record_path: bool = False,
) -> SuperDiffResult:
    """Reverse-SDE sampling (S2) with the models' log-densities tracked by (S4) and kappa from (S5)-(S7).
    Everything is computed in float64; `latents` (B, d) are standard normal."""
    k = len(denoisers)
    if rule not in RULES:
        raise ConfigError(f"superdiff rule must be one of {', '.join(RULES)}, got {rule!r}")
    if k < 1 or (rule == "and" and k != 2):
        raise ConfigError(f"rule={rule} needs {'two' if rule == 'and' else 'at least one'} models, got {k}")
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    f64 = torch.float64
    fixed = None
    if rule == "fixed":
        if kappa is None or len(kappa) != k:
            raise ConfigError(f"rule=fixed needs kappa with one weight per model ({k}), got {kappa!r}")
        fixed = torch.as_tensor(kappa, dtype=f64, device=latents.device)[:, None].expand(k, latents.shape[0])
    if rule == "or" and not temperature > 0:
        raise ConfigError(f"the OR temperature must be > 0, got {temperature!r}")
    w = torch.full((k,), 1.0 / k, dtype=f64) if weights is None else torch.as_tensor(weights, dtype=f64)
    if w.shape != (k,) or (w <= 0).any():
        raise ConfigError(f"OR weights must be {k} positive numbers, got {weights!r}")
    log_w = (w / w.sum()).log().to(latents.device)

    sigmas = karras_sigmas(
        num_steps + 1, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=latents.device, dtype=f64
    )[:-1]  # drop the final 0
    x = latents.to(f64) * sigmas[0]
    log_q = (
        gaussian_log_density(x, sigma_max).expand(k, -1).clone()
        if log_q_init is None
        else log_q_init.to(f64).clone()
    )
    kappa_sum = torch.zeros(k, dtype=f64, device=x.device)
    outside = 0
    path = [(float(sigmas[0]), x.clone(), log_q.clone())] if record_path else None
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        s = scores(denoisers, x, s_cur)  # (K, B, d)
        h = s_cur**2 - s_next**2  # integral of g^2 over the step
        z = torch.randn(x.shape, generator=generator, dtype=f64, device="cpu").to(x.device)
        if rule == "fixed":
            kap = fixed
        elif rule == "or":
            kap = or_kappa(log_q, temperature=temperature, log_weights=log_w)
        else:
            kap = and_kappa(s, z, h)
        dx = h * (kap[:, :, None] * s).sum(0) + h.sqrt() * z  # (S4)
        log_q = log_q + ito_increment(dx, s, h)
        x = x + dx
        kappa_sum += kap.mean(1)
        outside += int(((kap < 0) | (kap > 1)).any(0).sum())
        if record_path:
            path.append((float(s_next), x.clone(), log_q.clone()))
    steps = len(sigmas) - 1
    return SuperDiffResult(
        x=x,
        log_q=log_q,
        kappa_mean=kappa_sum / steps,
        kappa_outside=outside / (steps * x.shape[0]),
        kappa_last=kap,
        sigmas=sigmas,
        nfe=steps * k,
        path=path,
    )
