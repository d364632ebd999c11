"""The generator objectives of one-step diffusion distillation, in one file.

Notation (EDM noise, divlab's convention P = target, Q = model):
    x_g = G(sigma_max z)              one-step generator sample, z ~ N(0, I)
    x_t = x_g + sigma n               noised sample, ln sigma ~ N(p_mean, p_std^2)
    D_p(x_t; sigma)                   frozen teacher denoiser; score s_p = (D_p - x_t) / sigma^2
    D_q(x_t; sigma)                   fake-score denoiser trained on detached x_g; s_q = (D_q - x_t) / sigma^2
    r(x_t) = p_t(x_t) / q_t(x_t)      density ratio of the noised teacher and generator distributions,
                                      estimated by a discriminator: logit -> r = exp(logit)

f-distill (Xu et al. 2025, "One-step Diffusion Models with f-Divergence Distribution Matching"):
the gradient of D_f(p_t || q_theta,t) at noise level t is (their main theorem, Sec. 3)

    grad_theta D_f = E_{z, sigma, n} [ w(sigma) h(r(x_t)) (s_q(x_t) - s_p(x_t))^T d x_t / d theta ],
    h(r) = r^2 f''(r)                                     (f-distill's weighting function)

h comes from the one definition of each f-divergence in divlab.divergences (`weight`), never from
here: reverse_kl gives h = 1 (DMD / Diff-Instruct), forward_kl h = r, js h = r / (r + 1) up to the
constant the normalisation removes, etc. Following the reference implementation (NVlabs/FastGen
f_distill.py), r is taken from the discriminator logit clamped to [-10, 10], clipped to
[ratio_lower, ratio_upper] = [0.1, 20], and normalised in two stages (f-distill Sec. 4.2,
"normalisation"): r by its running mean per noise-level bin, then h by its batch mean (all-reduced
under DDP), so E[h] = 1 and the step size does not depend on f.

The time weight is DMD's (Yin et al. 2024, Sec. 3.2): w = 1 / mean_dims |x_g - D_p(x_t; sigma)| on the
x0-prediction difference sigma^2 (s_q - s_p) = D_q - D_p, and the gradient is applied through the
pseudo-target loss 0.5 |x_g - sg(x_g - grad)|^2 whose gradient w.r.t. x_g is exactly `grad`.

Objectives (`one_step.objective`):
- fdistill:      the gradient above, optionally + gan_weight * softplus(-logit) (DMD2 / f-distill's GAN
                 term: non-saturating GAN on the discriminator of noised generator samples).
- diff_instruct: Diff-Instruct (Luo et al. 2023, integral-KL gradient): h = 1 and the plain
                 weight w(sigma) sigma^2, i.e. grad = D_q - D_p without DMD's per-sample normaliser.
- sid:           Score identity Distillation (Zhou et al. 2024), generator loss with gradients through
                 x_t into both frozen denoisers:
                     L = (1 - alpha) |D_p - D_q|^2 + (D_p - D_q)^T (D_q - x_g),  weighted by w;  alpha = 1.2.
- uni_instruct:  Uni-Instruct (Wang et al. 2025): the gradient of the expanded f-divergence is a
                 combination of the Diff-Instruct gradient (Grad(DI)) and the score-implicit-matching
                 gradient (Grad(SIM)); divlab weights both terms per sample by the normalised h(r) of
                 the chosen f: L = h * L_DI + sim_weight * h * L_SIM, with L_SIM the SiD-form loss
                 above. NOTE: this is divlab's reading of the paper's gradient-equivalence theorem;
                 the exact per-term weights were not checked against the paper offline.

Equation numbers of the papers could not be checked on this offline machine; the comments name
sections and quantities instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divlab.errors import ConfigError

OBJECTIVES = ("fdistill", "diff_instruct", "sid", "uni_instruct")
LOGIT_CLAMP = 10.0   # |logit| <= 10 before exp (FastGen f_distill.py)


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise ConfigError(f"one_step.objective={name!r} is not known; choose one of {', '.join(OBJECTIVES)}")
    return name


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over DDP ranks (identity in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def density_ratio(logits: Tensor, *, lower: float = 0.1, upper: float = 20.0) -> Tensor:
    """r = exp(logit) of a discriminator trained with real = P (teacher/data), fake = Q (generator):
    at its optimum logit = log p/q. Clamped, exponentiated, clipped to [lower, upper], detached."""
    logits = logits.detach().float().reshape(len(logits), -1).mean(1)
    return torch.exp(logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)).clamp(lower, upper)


class RatioNormalizer(nn.Module):
    """Two-stage normalisation of the f-distill weights.

    Stage 1: r <- r / m_b, m_b the running mean of r in the noise-level bin b of ln sigma (an EMA
    with rate `ema_rate` of the all-reduced batch means; ema_rate = 0 uses the current batch alone).
    Stage 2: h <- h(r) / mean(h(r)) over the global batch (all-reduced), so mean(h) = 1.
    """

    def __init__(self, *,
                 num_bins: int = 10,           # bins of ln sigma
                 log_sigma_min: float = -4.8,  # bin range of ln sigma (values outside go to the end bins)
                 log_sigma_max: float = 2.4,
                 ema_rate: float = 0.0,        # m_b <- ema_rate m_b + (1 - ema_rate) batch mean
                 eps: float = 1e-6):
        super().__init__()
        if num_bins < 1 or not 0.0 <= ema_rate < 1.0 or not log_sigma_max > log_sigma_min:
            raise ConfigError("one_step.ratio needs num_bins >= 1, 0 <= ema_rate < 1 and log_sigma_max > log_sigma_min")
        self.num_bins, self.lo, self.hi, self.ema_rate, self.eps = num_bins, log_sigma_min, log_sigma_max, ema_rate, eps
        self.register_buffer("bins", torch.ones(num_bins))

    def bin_index(self, sigma: Tensor) -> Tensor:
        width = (self.hi - self.lo) / self.num_bins
        return ((sigma.double().log() - self.lo) / width).floor().long().clamp(0, self.num_bins - 1)

    @torch.no_grad()
    def normalise_ratio(self, r: Tensor, sigma: Tensor, *, update: bool = True) -> Tensor:
        idx = self.bin_index(sigma)
        if update:
            count = all_reduce_sum(torch.bincount(idx, minlength=self.num_bins).float())
            total = all_reduce_sum(torch.bincount(idx, weights=r.float(), minlength=self.num_bins).float())
            seen = count > 0
            mean = total / count.clamp(min=1)
            self.bins[seen] = self.ema_rate * self.bins[seen] + (1 - self.ema_rate) * mean[seen]
        return r / (self.bins[idx] + self.eps)

    @torch.no_grad()
    def normalise_weight(self, h: Tensor) -> Tensor:
        total = all_reduce_sum(torch.stack([h.float().sum(), h.new_tensor(float(h.numel()))]))
        return h / (total[0] / total[1] + self.eps)

    def forward(self, r: Tensor, sigma: Tensor, divergence, *, update: bool = True) -> Tensor:
        """Normalised weights h (mean 1) for ratios r at noise levels sigma; h = divergence.weight."""
        return self.normalise_weight(divergence.weight(self.normalise_ratio(r, sigma, update=update)))


def dmd_weight(x_g: Tensor, teacher_x0: Tensor, eps: float = 1e-6) -> Tensor:
    """DMD's normaliser: 1 / mean |x_g - D_p(x_t)| per sample, shape (B, 1, ...), no gradient."""
    dims = tuple(range(1, x_g.ndim))
    return 1.0 / ((x_g - teacher_x0).detach().abs().mean(dims, keepdim=True) + eps)


def expand(w: Tensor, x: Tensor) -> Tensor:
    return w.reshape(-1, *([1] * (x.ndim - 1)))


def pseudo_target_loss(x_g: Tensor, grad: Tensor) -> Tensor:
    """0.5 |x_g - sg(x_g - grad)|^2 summed over dims, mean over the batch: d/dx_g = grad."""
    target = (x_g - grad).detach()
    return 0.5 * ((x_g - target) ** 2).flatten(1).sum(1).mean()


def score_difference_grad(x_g: Tensor, teacher_x0: Tensor, fake_x0: Tensor, h: Tensor | None, *,
                          dmd_normalise: bool = True) -> Tensor:
    """The f-distill gradient on x_g: h w (D_q - D_p) = h w sigma^2 (s_q - s_p) (f-distill gradient with DMD's w)."""
    grad = (fake_x0 - teacher_x0).detach()
    if dmd_normalise:
        grad = grad * dmd_weight(x_g, teacher_x0)
    if h is not None:
        grad = grad * expand(h, grad)
    return grad


def sid_loss(x_g: Tensor, teacher_x0: Tensor, fake_x0: Tensor, *, alpha: float, h: Tensor | None = None) -> Tensor:
    """SiD generator loss (1 - alpha)|D_p - D_q|^2 + (D_p - D_q)^T (D_q - x_g), DMD-normalised per sample,
    optionally weighted by h; gradients flow through x_t into D_p and D_q (their weights are not stepped)."""
    diff = teacher_x0 - fake_x0
    per = ((1 - alpha) * diff**2 + diff * (fake_x0 - x_g)).flatten(1).sum(1)
    w = dmd_weight(x_g, teacher_x0).flatten(1)[:, 0]
    if h is not None:
        w = w * h
    return (w * per).mean()


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating GAN loss of the generator: softplus(-logit) (DMD2)."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """softplus(-logit_real) + softplus(logit_fake): the optimum has logit = log p_t/q_t = log r."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(objective: str, *, x_g: Tensor, teacher_x0: Tensor, fake_x0: Tensor, h: Tensor | None,
                   alpha: float = 1.2, sim_weight: float = 1.0) -> Tensor:
    """The distillation term of the generator loss (without the GAN term); `teacher_x0` / `fake_x0` carry
    gradients to x_t only for sid and uni_instruct."""
    if objective == "fdistill":
        return pseudo_target_loss(x_g, score_difference_grad(x_g, teacher_x0, fake_x0, h))
    if objective == "diff_instruct":
        return pseudo_target_loss(x_g, score_difference_grad(x_g, teacher_x0, fake_x0, None, dmd_normalise=False))
    if objective == "sid":
        return sid_loss(x_g, teacher_x0, fake_x0, alpha=alpha)
    if objective == "uni_instruct":
        di = pseudo_target_loss(x_g, score_difference_grad(x_g, teacher_x0, fake_x0, h))
        return di + sim_weight * sid_loss(x_g, teacher_x0, fake_x0, alpha=alpha, h=h)
    raise ConfigError(f"one_step.objective={objective!r} is not known; choose one of {', '.join(OBJECTIVES)}")
