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
pseudo-target loss 0.5 |x_g - sg(x_g - grad)|^2 whose gradient w.r.t. x_g is `grad` up to the reduction.

Reduction (`one_step.reduction`): "mean" (default) follows FastGen's variational_score_distillation_loss,
0.5 * mse(x_g, target) averaged over the batch AND the D data dimensions, so d loss / d x_g = grad / (B D);
"sum" sums over the D dimensions and averages over the batch (divlab's earlier convention, gradient
grad / B). The reduction fixes what `gan_weight` means relative to the distillation term: at the same
gan_weight, "sum" weights the GAN term D times less (D = 2 on the ring, 64 on 8x8 digits). The SiD/SIM
term uses the same reduction so both terms of uni_instruct stay on one scale.

Objectives (`one_step.objective`):
- fdistill:      the gradient above + gan_weight * softplus(-logit) (DMD2 / f-distill's GAN term:
                 non-saturating GAN on the discriminator of noised generator samples). FastGen's f-distill
                 requires the GAN term (gan_loss_weight_gen > 0; 1e-3 in its default and CIFAR-10
                 configs, 3e-3 for ImageNet-64), so `one_step.gan_weight` defaults to 1e-3; 0 gives the
                 pure f-divergence gradient (the "no GAN" variant).
- diff_instruct: Diff-Instruct (Luo et al. 2023, integral-KL gradient): h = 1 and the plain
                 weight w(sigma) sigma^2, i.e. grad = D_q - D_p without DMD's per-sample normaliser.
- sid:           Score identity Distillation (Zhou et al. 2024), generator loss with gradients through
                 x_t into both frozen denoisers:
                     L = (1 - alpha) |D_p - D_q|^2 + (D_p - D_q)^T (D_q - x_g),  weighted by w;  alpha = 1.2.
- uni_instruct:  Uni-Instruct (Wang et al. 2025): the gradient of the expanded f-divergence is a
                 combination of the Diff-Instruct gradient (Grad(DI)) and the score-implicit-matching
                 gradient (Grad(SIM)) with scalar weights, lambda_DI Grad(DI) + lambda_SIM Grad(SIM).
                 `uni_instruct_form`:
                   paper       (default) L = di_weight * L_DI + sim_weight * L_SIM, scalar weights, L_DI
                               the DMD-normalised DI pseudo-target loss, L_SIM the SiD-form loss above;
                               h(r) (hence the divergence) enters neither term.
                   h_weighted  divlab's earlier variant: both terms weighted per sample by the
                               normalised h(r) of the chosen f, L = di_weight * h L_DI + sim_weight * h L_SIM.
                 NOTE: the scalar form follows the issue's reading of the paper's gradient; the paper's
                 equations could not be opened on this offline machine.

Equation numbers of the papers could not be checked on this offline machine; the comments name
sections and quantities instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divlab.errors import ConfigError

OBJECTIVES = ("fdistill", "diff_instruct", "sid", "uni_instruct")
REDUCTIONS = ("mean", "sum")  # over data dimensions: FastGen's mean, or divlab's earlier sum
UNI_FORMS = ("paper", "h_weighted")  # uni_instruct: scalar weights (paper) or per-sample h(r) on both terms
LOGIT_CLAMP = 10.0  # |logit| <= 10 before exp (FastGen f_distill.py)


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise ConfigError(f"one_step.objective={name!r} is not known; choose one of {', '.join(OBJECTIVES)}")
    return name


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"one_step.{key}={value!r} is not known; choose one of {', '.join(choices)}")
    return value


def reduce_dims(per_element: Tensor, reduction: str) -> Tensor:
    """Per-sample reduction over the data dimensions: mean (FastGen) or sum; shape (B,)."""
    flat = per_element.flatten(1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "sum":
        return flat.sum(1)
    raise ConfigError(f"one_step.reduction={reduction!r} is not known; choose one of {', '.join(REDUCTIONS)}")


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

    def __init__(
        self,
        *,
        num_bins: int = 10,  # bins of ln sigma
        log_sigma_min: float = -4.8,  # bin range of ln sigma (values outside go to the end bins)
        log_sigma_max: float = 2.4,
        ema_rate: float = 0.0,  # m_b <- ema_rate m_b + (1 - ema_rate) batch mean
        eps: float = 1e-6,
    ):
        super().__init__()
        if num_bins < 1 or not 0.0 <= ema_rate < 1.0 or not log_sigma_max > log_sigma_min:
            raise ConfigError(
                "one_step.ratio needs num_bins >= 1, 0 <= ema_rate < 1 and log_sigma_max > log_sigma_min"
            )
        self.num_bins, self.lo, self.hi, self.ema_rate, self.eps = (
            num_bins,
            log_sigma_min,
            log_sigma_max,
            ema_rate,
            eps,
        )
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


def pseudo_target_loss(x_g: Tensor, grad: Tensor, *, reduction: str = "mean") -> Tensor:
    """0.5 |x_g - sg(x_g - grad)|^2, mean over the batch; over the D dims a mean (FastGen:
    0.5 * mse(..., reduction="mean"), d/dx_g = grad / (B D)) or a sum (d/dx_g = grad / B)."""
    target = (x_g - grad).detach()
    return 0.5 * reduce_dims((x_g - target) ** 2, reduction).mean()


def score_difference_grad(
    x_g: Tensor, teacher_x0: Tensor, fake_x0: Tensor, h: Tensor | None, *, dmd_normalise: bool = True
) -> Tensor:
    """The f-distill gradient on x_g: h w (D_q - D_p) = h w sigma^2 (s_q - s_p) (f-distill gradient with DMD's w)."""
    grad = (fake_x0 - teacher_x0).detach()
    if dmd_normalise:
        grad = grad * dmd_weight(x_g, teacher_x0)
    if h is not None:
        grad = grad * expand(h, grad)
    return grad


def sid_loss(
    x_g: Tensor,
    teacher_x0: Tensor,
    fake_x0: Tensor,
    *,
    alpha: float,
    h: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """SiD generator loss (1 - alpha)|D_p - D_q|^2 + (D_p - D_q)^T (D_q - x_g), DMD-normalised per sample,
    optionally weighted by h, reduced over dims like the pseudo-target loss; gradients flow through x_t
    into D_p and D_q (their weights are not stepped)."""
    diff = teacher_x0 - fake_x0
    per = reduce_dims((1 - alpha) * diff**2 + diff * (fake_x0 - x_g), reduction)
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


def generator_loss(
    objective: str,
    *,
    x_g: Tensor,
    teacher_x0: Tensor,
    fake_x0: Tensor,
    h: Tensor | None,
    alpha: float = 1.2,
    sim_weight: float = 1.0,
    di_weight: float = 1.0,
    reduction: str = "mean",
    uni_instruct_form: str = "paper",
) -> Tensor:
    """The distillation term of the generator loss (without the GAN term); `teacher_x0` / `fake_x0` carry
    gradients to x_t only for sid and uni_instruct."""
    red = check_choice("reduction", reduction, REDUCTIONS)
    if objective == "fdistill":
        return pseudo_target_loss(x_g, score_difference_grad(x_g, teacher_x0, fake_x0, h), reduction=red)
    if objective == "diff_instruct":
        grad = score_difference_grad(x_g, teacher_x0, fake_x0, None, dmd_normalise=False)
        return pseudo_target_loss(x_g, grad, reduction=red)
    if objective == "sid":
        return sid_loss(x_g, teacher_x0, fake_x0, alpha=alpha, reduction=red)
    if objective == "uni_instruct":
        hw = h if check_choice("uni_instruct_form", uni_instruct_form, UNI_FORMS) == "h_weighted" else None
        di = pseudo_target_loss(x_g, score_difference_grad(x_g, teacher_x0, fake_x0, hw), reduction=red)
        return di_weight * di + sim_weight * sid_loss(
            x_g, teacher_x0, fake_x0, alpha=alpha, h=hw, reduction=red
        )
    raise ConfigError(f"one_step.objective={objective!r} is not known; choose one of {', '.join(OBJECTIVES)}")
