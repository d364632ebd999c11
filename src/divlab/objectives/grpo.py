"""GRPO with a selectable divergence term: none, reverse KL (k3 on policy samples) or DPH-RL's mass-covering
forward KL and JS on a rehearsal set sampled once from the initial policy.

GRPO (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
arXiv:2402.03300, Sec. 4.1). For a prompt q, G outputs o_1..o_G are sampled from pi_old; with outcome rewards
r_1..r_G every token of o_i gets the group-normalised advantage

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)                                     (GRPO, Sec. 4.1.2)

(std: the unbiased sample standard deviation, as TRL's and verl's GRPO compute it; a group whose rewards are
all equal has A = 0), and the objective, maximised, is (their Eq. 3)

    J = (1/G) sum_i (1/|o_i|) sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps_c, 1 + eps_c) A_i) - beta D_it ],
    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t).

`GRPOLoss` returns loss = -J. The divergence term D (`divergence=`):

- `none`: D = 0 (GRPO without a KL term, as in DAPO and DPH-RL's exploration set).
- `reverse_kl`: GRPO's default, Eq. 4: on the policy's own samples, per token,
  D_it = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (Schulman's k3, an unbiased, non-negative estimate of
  KL(pi_theta || pi_ref)). In the library's convention (DESIGN.md: P = target = pi_ref, Q = model = pi_theta,
  D_f(P||Q) = E_Q f(P/Q)) this is the control-variate form f(r) - f'(1) (r - 1), r = P/Q, of the library's
  `reverse_kl` generator f(r) = -log r (`policy_sample_term`).
- `forward_kl`, `js`: DPH-RL (Li, Zhou, Hao, Liu, Miao, Pang, Tan, Chu, Wang, Pan, Qu, Qi, "The Choice of
  Divergence: A Neglected Key to Mitigating Diversity Collapse in Reinforcement Learning with Verifiable
  Reward", 2025, arXiv:2509.07430): a mass-covering f-divergence to the initial policy, estimated on samples
  drawn from the initial policy once, before RL (the rehearsal set; no online reference model). With
  u = pi_theta / pi_ref per token of a rehearsal sample, D_f(P||Q) = E_Q f(P/Q) = E_P[u f(1/u)], and adding the
  zero-mean control variate f'(1)(u - 1) gives the non-negative generator form (`rehearsal_term`)

      forward_kl  (KL(pi_ref || pi_theta), library f(t) = t log t):   u - log u - 1
      js          (library JS, natural log, at most log 2; symmetric, so u f(1/u) = f(u), f'(1) = 0):
                  f_JS(u) = (u log u - (u + 1) log((u + 1)/2)) / 2

  The rehearsal term is averaged like the surrogate (per sample, mean over its tokens; then over samples) and
  enters J with -beta. What was implemented from what was read: I could not read the paper's method section;
  I read its abstract (arXiv HTML), the official repository's README (verl fork; `sft_loss_mode` forward | js |
  js_low_var, "the JS generator") and a third-party summary of its Sec. 3 (pre-sampled trajectories from
  pi_ref, forward KL sum_a pi_ref log(pi_ref / pi_theta), a near-perfect set D_pef of problems the base model
  solves 8/8 that gets the divergence, the rest plain PPO-clip). The estimator above is the generator form the
  issue names ("u - log u - 1 with u = pi_theta / pi_ref on the rehearsal samples"); it is per token (the
  per-token sum is an unbiased estimate of the sequence-level forward KL by the chain rule; for JS it is the
  sum of per-state JS, not the sequence-level JS). By default divlab's rehearsal set is one sample of the
  initial policy per RL prompt and every prompt gets the surrogate; with rlvr.split (divlab.tasks.rlvr_split)
  it is DPH-RL's: the surrogate on D_exp's groups only, the divergence on D_pef's correct start samples only
  (this loss is unchanged: the task chooses what it is given).

All log-probabilities are float32 per-token values of the sampled tokens; ratios are formed in log space and
clamped to |log ratio| <= LOG_RATIO_CLAMP before exponentiation. tests/unit/test_grpo.py checks the advantages,
clipping and both estimators by hand.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from divlab.divergences import get_divergence
from divlab.errors import ConfigError

__all__ = [
    "DIVERGENCES",
    "REHEARSAL",
    "GRPOLoss",
    "clipped_surrogate",
    "group_advantages",
    "policy_sample_term",
    "rehearsal_term",
    "sequence_mean",
]

DIVERGENCES = ("none", "reverse_kl", "forward_kl", "js")  # rlvr.divergence options
REHEARSAL = ("forward_kl", "js")  # estimated on the rehearsal set (DPH-RL); reverse_kl on policy samples
LOG_RATIO_CLAMP = 20.0  # |log ratio| cap before exp (e^20 ~ 5e8: far beyond any useful ratio)


def check_divergence(name: str) -> str:
    if name not in DIVERGENCES:
        raise ConfigError(f"rlvr.divergence={name!r} is not known; choose one of {', '.join(DIVERGENCES)}")
    return name


def group_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-4) -> Tensor:
    """(N,) rewards of N / G groups of G consecutive samples -> (N,) A_i = (r_i - mean) / (std + eps)."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(
            f"need groups of >= 2 samples filling the batch; got {rewards.numel()} / {group_size}"
        )
    r = rewards.float().view(-1, group_size)
    mean, std = r.mean(dim=1, keepdim=True), r.std(dim=1, keepdim=True)  # unbiased std (TRL, verl)
    return ((r - mean) / (std + eps)).view(-1)


def sequence_mean(values: Tensor, mask: Tensor) -> Tensor:
    """(N, T) per-token values -> (N,) mean over each row's masked tokens (the 1/|o_i| of GRPO's Eq. 3)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, *, clip: float
) -> tuple[Tensor, Tensor]:
    """Per token min(rho A, clip(rho, 1 - clip, 1 + clip) A) (Eq. 3), rho = exp(logp - old_logp); (N, T)
    logp, (N,) advantages. Returns (surrogate (N, T), clipped (N, T) bool: the clipped branch is the min)."""
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    a = advantages[:, None]
    plain, clipped = ratio * a, ratio.clamp(1 - clip, 1 + clip) * a
    return torch.minimum(plain, clipped), clipped < plain


def _f_prime_at_one(divergence: nn.Module) -> float:
    return float(divergence.f_prime(torch.ones(())))


def policy_sample_term(divergence: nn.Module, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token estimate of D_f(pi_ref || pi_theta) on samples of pi_theta: f(r) - f'(1)(r - 1), r = pi_ref /
    pi_theta. For reverse_kl (f = -log r) this is GRPO's Eq. 4, r - log r - 1 (k3)."""
    r = torch.exp((ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return divergence.f(r) - _f_prime_at_one(divergence) * (r - 1)


def rehearsal_term(divergence: nn.Module, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token estimate of D_f(pi_ref || pi_theta) on samples of pi_ref (the rehearsal set):
    u f(1/u) + f'(1)(u - 1), u = pi_theta / pi_ref. forward_kl: u - log u - 1; js: f_JS(u)."""
    u = torch.exp((logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return u * divergence.f(1 / u) + _f_prime_at_one(divergence) * (u - 1)


class GRPOLoss(nn.Module):
    """loss = -J of GRPO's Eq. 3 with the divergence term of the module docstring."""

    def __init__(
        self,
        *,
        clip: float = 0.2,  # eps_c of the clipped ratio, in (0, 1)
        beta: float = 0.04,  # weight of the divergence term, >= 0 (DeepSeekMath: 0.04)
        divergence: str = "none",  # none | reverse_kl | forward_kl | js
    ):
        super().__init__()
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < 1:
            raise ConfigError(f"rlvr.clip must be a number in (0, 1), got {clip!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
            raise ConfigError(f"rlvr.beta must be a finite number >= 0, got {beta!r}")
        self.clip, self.beta, self.name = float(clip), float(beta), check_divergence(divergence)
        self.divergence = None if divergence == "none" else get_divergence(divergence)

    @property
    def uses_rehearsal(self) -> bool:
        return self.name in REHEARSAL

    @property
    def needs_reference(self) -> bool:
        """Policy-sample terms need pi_ref on the policy's samples (rehearsal stores its own pi_ref)."""
        return self.name == "reverse_kl"

    def forward(
        self,
        *,
        logp: Tensor,  # (N, T) log pi_theta of the sampled tokens
        old_logp: Tensor,  # (N, T) log pi_old of the same tokens (no gradient)
        advantages: Tensor,  # (N,) group-normalised advantages
        mask: Tensor,  # (N, T) bool: the tokens of each output (its <eos> included)
        ref_logp: Tensor | None = None,  # (N, T) log pi_ref (reverse_kl)
        rehearsal_logp: Tensor | None = None,  # (M, T') log pi_theta of rehearsal tokens (forward_kl, js)
        rehearsal_ref_logp: Tensor | None = None,  # (M, T') their log pi_ref, stored when sampled
        rehearsal_mask: Tensor | None = None,  # (M, T') bool
    ) -> dict[str, Tensor]:
        surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, clip=self.clip)
        objective = sequence_mean(surrogate, mask).mean()
        zero = logp.new_zeros(())
        div = zero
        if self.name == "reverse_kl":
            if ref_logp is None:
                raise ValueError("divergence=reverse_kl needs ref_logp")
            div = sequence_mean(policy_sample_term(self.divergence, logp, ref_logp), mask).mean()
        elif self.uses_rehearsal:
            if rehearsal_logp is None or rehearsal_ref_logp is None or rehearsal_mask is None:
                raise ValueError(f"divergence={self.name} needs the rehearsal log-probabilities and mask")
            term = rehearsal_term(self.divergence, rehearsal_logp, rehearsal_ref_logp)
            div = sequence_mean(term, rehearsal_mask).mean()
        n_tokens = mask.sum().clamp(min=1)
        return {
            "loss": -(objective - self.beta * div),
            "surrogate": objective.detach(),
            "divergence": div.detach(),
            "clip_fraction": (clipped & mask).sum() / n_tokens,
        }
