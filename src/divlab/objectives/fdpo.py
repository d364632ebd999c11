"""f-DPO: direct preference optimisation under an f-divergence constraint.

Wang, Jiang, Yang, Liu, Chen, "Beyond Reverse KL: Generalizing Direct Preference Optimization with
Diverse Divergence Constraints" (ICLR 2024, arXiv:2309.16240). With the sequence ratio

    u = pi_theta(y|x) / pi_ref(y|x),    log u = sum_t log pi_theta(y_t|.) - sum_t log pi_ref(y_t|.)

(summed token log-probabilities of the response), the f-DPO loss of a preference (x, y_w, y_l) is

    L = -log sigmoid( beta f'(u_w) - beta f'(u_l) ),

and beta f'(u) is the implicit reward (r(x, y) = beta f'(pi_theta/pi_ref) + const, from the KKT conditions
of the f-constrained reward maximisation). The paper's generators f and derivatives f' (its table of
divergences), in its argument u = pi_theta / pi_ref:

    reverse KL   f = u log u                             f'(u) = log u + 1           (plain DPO)
    forward KL   f = -log u                              f'(u) = -1/u
    JS           f = u log u - (u + 1) log((u + 1)/2)    f'(u) = log(2u / (1 + u))
    alpha        f = (u^(1-a) - (1-a) u - a)/(a(a - 1))  f'(u) = (1 - u^(-a)) / a,   a in (0, 1)

Relation to divlab's divergence library (DESIGN.md: D_f(P||Q) = E_Q f_lib(P/Q), P = target = pi_ref,
Q = model = pi_theta): the constraint D(pi_theta || pi_ref) of the paper, E_ref[f(u)], is the library member
whose name says the same direction, written in the swapped ratio r = P/Q = 1/u; its generator in u is the
perspective f(u) = u f_lib(1/u), so f'(u) = f_lib(1/u) - f_lib'(1/u) / u (`perspective_prime`). Hence
divergence=reverse_kl (KL(Q||P) = KL(pi_theta||pi_ref)) is DPO, divergence=forward_kl is the paper's forward
KL, divergence=alpha with the library's Amari alpha a gives exactly the paper's alpha-divergence with the
same a (a -> 0: reverse KL, a -> 1: forward KL), and divergence=js gives half the paper's f' (the library's JS
is the natural-log JS, bounded by log 2; the paper's generator is twice it): `scale` = 2 restores the
paper's, so beta means what it means in the paper. tests/unit/test_fdpo.py checks every closed form below
against autograd of the library's f through this perspective.

TRL's `DPOTrainer` (loss_type with f_divergence_type alpha) flipped its alpha convention in v0.29:
alpha_TRL = 1 - alpha_paper. divlab follows the paper (and its library's Amari alpha).

The closed forms are evaluated in log u for stability (sequence log-ratios reach tens of nats):
reverse KL log u + 1; forward KL -exp(-log u); JS log 2 - softplus(-log u) (= log 2 + log u - softplus(log u),
without its cancellation at large u); alpha -expm1(-a log u)/a.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divlab.errors import ConfigError

__all__ = ["FDPOLoss", "SUPPORTED", "dpo_f_prime", "perspective_prime", "sequence_logps"]

LOG2 = math.log(2.0)
SUPPORTED = ("reverse_kl", "forward_kl", "js", "alpha")  # divergence= options f-DPO accepts
# f' of the paper's generator (module docstring) as a function of log u, per library member; and the factor
# between the paper's generator and the perspective of the library's (2 for JS, 1 otherwise).
SCALE = {"reverse_kl": 1.0, "forward_kl": 1.0, "js": 2.0, "alpha": 1.0}


def dpo_f_prime(divergence: nn.Module) -> Callable[[Tensor], Tensor]:
    """log u -> f'(u) of the paper (module docstring) for a library divergence; ConfigError if it has none."""
    name = getattr(divergence, "name", type(divergence).__name__)
    if name not in SUPPORTED:
        raise ConfigError(
            f"divergence={name} has no f' that f-DPO can use (it needs a strictly convex f with f' "
            f"invertible on (0, inf)); choose divergence= one of {', '.join(SUPPORTED)}"
        )
    if name == "reverse_kl":
        return lambda logu: logu + 1
    if name == "forward_kl":
        return lambda logu: -torch.exp(-logu)
    if name == "js":
        return lambda logu: LOG2 - F.softplus(-logu)  # = log 2 + log u - softplus(log u)
    a = float(divergence.alpha)
    if not 0.0 < a < 1.0:
        raise ConfigError(
            f"divergence.alpha={a:g} is outside (0, 1), where f-DPO's alpha-divergence is defined "
            f"(Wang et al. 2023, Table 1); use 0 < alpha < 1, or divergence=reverse_kl / forward_kl for the ends"
        )
    return lambda logu: -torch.expm1(-a * logu) / a


def perspective_prime(divergence: nn.Module, u: Tensor) -> Tensor:
    """f'(u) = SCALE * (f_lib(1/u) - f_lib'(1/u) / u) from the library's own f and f' (module docstring):
    the reference the closed forms of dpo_f_prime are tested against; unstable for large |log u|."""
    r = 1 / u
    return SCALE.get(divergence.name, 1.0) * (divergence.f(r) - divergence.f_prime(r) * r)


def sequence_logps(logps: Tensor, mask: Tensor) -> Tensor:
    """Summed token log-probs per row: logps, mask (B, L) -> (B,); positions where mask is False count 0."""
    return torch.where(mask, logps, torch.zeros((), dtype=logps.dtype, device=logps.device)).sum(-1)


class FDPOLoss(nn.Module):
    """The f-DPO loss on sequence log-probabilities; returns the loss and the terms logged as metrics."""

    def __init__(
        self,
        *,
        divergence: nn.Module,  # a library f-divergence: reverse_kl (DPO), forward_kl, js, alpha (0 < a < 1)
        beta: float = 0.1,  # beta > 0: strength of the divergence constraint (reward scale)
    ):
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < math.inf:
            raise ConfigError(f"dpo.beta must be a finite number > 0, got {beta!r}")
        self.f_prime = dpo_f_prime(divergence)
        self.divergence_name = divergence.name
        self.beta = float(beta)

    def reward(self, policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
        """Implicit reward beta f'(u), u = pi_theta / pi_ref, from sequence log-probs (B,) -> (B,)."""
        return self.beta * self.f_prime(policy_logps - ref_logps)

    def forward(
        self,
        *,
        policy_chosen: Tensor,  # (B,) log pi_theta(y_w | x), summed over response tokens
        policy_rejected: Tensor,  # (B,) log pi_theta(y_l | x)
        ref_chosen: Tensor,  # (B,) log pi_ref(y_w | x)
        ref_rejected: Tensor,  # (B,) log pi_ref(y_l | x)
    ) -> dict[str, Tensor]:
        """{"loss": mean over the batch, "chosen_reward", "rejected_reward", "margin" (B,), "accuracy":
        mean of margin > 0}; rewards are beta f'(u) (the chosen/rejected rewards of DPO's metrics)."""
        chosen = self.reward(policy_chosen, ref_chosen)
        rejected = self.reward(policy_rejected, ref_rejected)
        margin = chosen - rejected
        return {
            "loss": -F.logsigmoid(margin).mean(),
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            "margin": margin,
            "accuracy": (margin > 0).to(margin.dtype).mean(),
        }
