"""SequenceMatch's objective (Cundy & Ermon, ICLR 2024) in one file: noise-and-backspace data, the
soft-Q reading of the logits, and the IQ-Learn (Garg et al. 2021) loss with a mixture regulariser.

Equations (numbered here, (SM1)-(SM5), as this file computes them):

(SM1) Q(s, a) = logit_a(s),   V(s) = logsumexp_a logit_a(s)      the logits are a soft Q-function,
                                                                 pi(a|s) = softmax = exp(Q - V)
(SM2) r(s, a) = Q(s, a) - gamma * V(s'),  V(s') = 0 after <eos>  the reward the logits imply
(SM3) L_SM = - E_data[r] + E_mix[V(s) - gamma V(s')] + E_mix[psi(r)]
             mix = (1 - w) data + w policy (w = policy_weight; the paper's mixture is w = 1/2)
(SM4) with data alone the first two terms telescope per transition:
             - (Q - gamma V') + (V - gamma V') = V - Q = - log pi(a|s),
      so L_SM(data only) = NLL + E_data[psi(r)] exactly (tested to 1e-6 in float64).
(SM5) L = (1 - lambda) NLL + lambda L_SM, after a behaviour-cloning (lambda = 0) phase.

The regulariser psi comes from the divergence library. IQ-Learn with a regulariser on the mixture
minimises D_g(rho_data || rho_mix) for a base generator g (its variational form
sup_r E_data[r] - E_mix[g*(r)], with E_mix[r] replaced by the soft-value term of (SM3)), so
psi(r) = g*(r) - r, g* the convex conjugate of g normalised to g(1) = g'(1) = 0. We scale g so that
every choice has the same curvature psi''(0) = 1 / (2 alpha), i.e. psi_alpha(r) = c (g*(r/c) - r/c)
with c = 2 alpha / g''(1) (g''(1) = `weight(1)` of the library member):

  divergence=chi2_mixture  chi2_mixture(P, Q) = pearson_chi2(P || (P+Q)/2) (library identity), so the
                           base is Pearson, g(u) = (u-1)^2, g*(t) = t + t^2/4, psi(r) = r^2 / (4 alpha):
                           the paper's SequenceMatch-chi^2 loss; alpha = 0.5 gives 1/(4 alpha) = 1/2.
  divergence=forward_kl    g(u) = u log u - u + 1 (KL(rho_data || rho_mix)), g*(t) = e^t - 1,
                           psi(r) = c (e^{r/c} - 1 - r/c), c = 2 alpha.
  divergence=js            g = the library's JS generator, g*(t) = -log(2 - e^{2t}) / 2 for t < log(2)/2,
                           c = 8 alpha; past 95% of that bound psi continues as its second-order
                           Taylor polynomial, so the loss stays finite.
tests/unit/test_seqmatch_loss.py checks each g* against the Legendre transform of the library's f.

The state after `<bs>` (`seqmatch.bs_state`):
  conditioned  (default, divlab's earlier convention) `<bs>` is fed to the model: s' = prefix + `<bs>`,
               so V(s') and Q(s', a) come from logits that know a deletion just happened.
  popped       the paper's reference semantics: the backspace pops the KV cache and returns to the
               shortened prefix, s' = prefix, so V(s') = V(prefix) and Q(s', a) = Q(prefix, a).
               `soft_q_transitions(..., state_index=backspace_state_index(...))` takes each state's
               logits from the prefix's last token (one forward pass; tests check it against a
               per-state recomputation), and the sampler uses the same rule.

Noise and backspace (the data side of the backspace action): before each action of a data
sequence, with probability p_noise, insert a random token (uniform over `noise_ids` other than the
true next token) followed by `<bs>`. The noise token is never a target; `<bs>` is the target after
it, and the true token is the target after `<bs>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from divlab.errors import ConfigError

REGULARISERS = ("chi2_mixture", "forward_kl", "js")
BS_STATES = ("conditioned", "popped")  # the state after <bs>: prefix + <bs> (divlab) | prefix (the paper)


# ---------------------------------------------------------------------------------------------- data


def add_noise_and_backspace(
    tokens: Tensor,
    *,
    prompt_len: Tensor,  # (B,) leading tokens that get no noise (the given prompt)
    length: Tensor,  # (B,) real tokens per row
    p_noise: float,  # probability of a (noise, <bs>) pair before each action
    noise_ids: Tensor,  # (K,) token ids a noise token is drawn from, K >= 2
    bs_id: int,  # <bs>
    pad_id: int,  # fills the tail of the new rows
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, length, is_noise) of the noised rows; is_noise (B, T') marks the inserted noise tokens."""
    if not 0.0 <= p_noise < 1.0:
        raise ConfigError(f"seqmatch.p_noise must be in [0, 1), got {p_noise}")
    b, t = tokens.shape
    pool = noise_ids.cpu().long().tolist()
    u = torch.rand(b, t, generator=generator).tolist()
    pick = torch.rand(b, t, generator=generator).tolist()
    rows, flags = [], []
    for r, (row, p) in enumerate(zip(tokens.tolist(), prompt_len.tolist())):
        row = row[: int(length[r])]
        out, noise = row[:p], [False] * p
        for j, tok in enumerate(row[p:], start=p):
            if u[r][j] < p_noise:
                choices = [n for n in pool if n != tok]  # never the true token
                out += [choices[int(pick[r][j] * len(choices))], bs_id]
                noise += [True, False]
            out.append(tok)
            noise.append(False)
        rows.append(out)
        flags.append(noise)
    width = max(len(r) for r in rows)
    new = torch.full((b, width), pad_id, dtype=torch.long)
    is_noise = torch.zeros(b, width, dtype=torch.bool)
    for r, (row, flag) in enumerate(zip(rows, flags)):
        new[r, : len(row)] = torch.tensor(row)
        is_noise[r, : len(flag)] = torch.tensor(flag)
    lengths = torch.tensor([len(r) for r in rows])
    return new.to(tokens.device), lengths.to(tokens.device), is_noise.to(tokens.device)


# ---------------------------------------------------------------------------------------------- loss


@dataclass
class Transitions:
    """Per-transition soft-Q quantities of a batch of sequences, (B, T-1) each; t -> t+1 is one action."""

    r: Tensor  # (SM2) implied reward
    v: Tensor  # V(s_t)
    v_next: Tensor  # V(s_{t+1}), 0 after <eos>
    nll: Tensor  # -log pi(a_t | s_t) = V(s_t) - Q(s_t, a_t)
    mask: Tensor  # bool: the transition counts


def soft_q_transitions(
    logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    eos_id: int,
    gamma: float,
    state_index: Tensor | None = None,
) -> Transitions:
    """(SM1)-(SM2) for logits (B, T, V) of tokens (B, T); mask (B, T-1) selects the counted actions.
    state_index (B, T): the position whose logits are the state after each position (bs_state=popped,
    from divlab.models.gpt_cache.backspace_state_index); None: every position is its own state."""
    if state_index is not None:
        logits = logits.gather(1, state_index[..., None].expand(-1, -1, logits.shape[-1]))
    v_all = logits.logsumexp(dim=-1)  # (SM1) V(s_t), (B, T)
    actions = tokens[:, 1:]
    q = logits[:, :-1].gather(-1, actions.clamp(min=0)[..., None])[..., 0]  # (SM1) Q(s_t, a_t)
    v, v_next = v_all[:, :-1], torch.where(actions == eos_id, torch.zeros_like(v_all[:, 1:]), v_all[:, 1:])
    return Transitions(r=q - gamma * v_next, v=v, v_next=v_next, nll=v - q, mask=mask)  # (SM2)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum() / mask.sum().clamp(
        min=1
    )


class MixtureRegulariser:
    """psi(r) = c (g*(r/c) - r/c) of (SM3), from a library divergence (see the module docstring)."""

    def __init__(
        self,
        *,
        divergence,  # a divlab f-divergence (chi2_mixture, forward_kl or js)
        alpha: float = 0.5,  # curvature psi''(0) = 1 / (2 alpha); chi^2: psi = r^2 / (4 alpha)
    ) -> None:
        name = getattr(divergence, "name", type(divergence).__name__)
        if name not in REGULARISERS:
            raise ConfigError(
                f"divergence={name} has no SequenceMatch regulariser; choose one of {', '.join(REGULARISERS)}"
            )
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise ConfigError(f"seqmatch.alpha must be a number > 0, got {alpha!r}")
        from divlab.divergences import get_divergence

        self.name, self.alpha = name, float(alpha)
        base = get_divergence("pearson_chi2") if name == "chi2_mixture" else divergence
        curvature = float(base.weight(torch.tensor(1.0, dtype=torch.float64)))  # g''(1) = h(1)
        self.c = 2 * self.alpha / curvature
        self.t_max = 0.95 * 0.5 * math.log(2.0) if name == "js" else math.inf  # JS: g* finite below log(2)/2

    @staticmethod
    def conjugate(name: str, t: Tensor) -> Tensor:
        """g*(t) of the normalised base generator of `name`."""
        if name == "chi2_mixture":
            return t + t**2 / 4
        if name == "forward_kl":
            return torch.expm1(t)
        return -0.5 * torch.log(2 - torch.exp(2 * t))  # js

    def _psi_t(self, t: Tensor) -> Tensor:
        """g*(t) - t, with the JS second-order continuation past t_max."""
        if math.isinf(self.t_max):
            return self.conjugate(self.name, t) - t
        t0 = torch.full((), self.t_max, dtype=t.dtype, device=t.device)
        inside = self.conjugate(self.name, torch.minimum(t, t0)) - torch.minimum(t, t0)
        e = math.exp(2 * self.t_max)
        d1 = e / (2 - e) - 1  # (g* - id)'(t0); g*'(t) = e^{2t} / (2 - e^{2t})
        d2 = 4 * e / (2 - e) ** 2  # g*''(t0)
        dt = (t - t0).clamp(min=0)
        return inside + d1 * dt + 0.5 * d2 * dt**2

    def __call__(self, r: Tensor) -> Tensor:
        return self.c * self._psi_t(r / self.c)


def sequencematch_loss(
    data: Transitions,
    policy: Transitions | None,
    *,
    regulariser: MixtureRegulariser,
    gamma: float,
    policy_weight: float = 0.5,  # w of (SM3); without policy transitions the mixture is the data
) -> tuple[Tensor, dict[str, Tensor]]:
    """(SM3): returns the loss and its terms (for logging)."""
    d_r = masked_mean(data.r, data.mask)
    d_v = masked_mean(data.v - gamma * data.v_next, data.mask)
    d_psi = masked_mean(regulariser(data.r), data.mask)
    if policy is None or not bool(policy.mask.any()):
        mix_v, mix_psi = d_v, d_psi
    else:
        p_v = masked_mean(policy.v - gamma * policy.v_next, policy.mask)
        p_psi = masked_mean(regulariser(policy.r), policy.mask)
        mix_v = (1 - policy_weight) * d_v + policy_weight * p_v
        mix_psi = (1 - policy_weight) * d_psi + policy_weight * p_psi
    loss = -d_r + mix_v + mix_psi
    return loss, {"sm_reward": d_r, "sm_value": mix_v, "sm_psi": mix_psi}
