"""DPH-RL's split of the RL training problems (`rlvr.split`, optional): a near-perfect set D_pef and an
exploration set D_exp, computed once from the start policy (divlab.tasks.rlvr).

DPH-RL (Li et al. 2025, "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in
Reinforcement Learning with Verifiable Reward", arXiv:2509.07430; its method section, Sec. 3 by a third-party
summary: a pre-sampling stage, then a hybrid loss) samples the initial policy k times on every training problem
before RL. Problems it solves in all k samples form D_pef; the others form D_exp. RL then has two parts:

    L = L_exp(D_exp) + beta * D_f(pi_ref || pi_theta) on rehearsal samples of D_pef

- D_exp: the clipped policy-gradient objective only (GRPO / DAPO, no KL term);
- D_pef: the f-divergence (forward KL or JS, in generator form) only, estimated on correct samples of the
  initial policy on D_pef problems; D_pef problems are never RL prompts.

What was read (to understand, nothing copied): the paper's abstract and a summary of its method (RL without a
KL term on D_exp, an f-divergence penalty on D_pef), and the official repository (github.com/seamoke/DPH-RL):
its README (pre-sampling: every training problem sampled and checked k times, eight by default), its split script (data/sql/process_data/exact_correct_id.py: a problem is "correct" only when every
counted attempt is right, it counts the first 4 attempts; every other problem, all-wrong ones included, goes to
the RL file), its training scripts (data.train_files = the wrong set: RL prompts; data.sft_files = the correct
set, with one sample per problem of which only correct ones are kept: the rehearsal tensors) and its actor
(verl/workers/actor/dp_actor.py: a rehearsal micro-batch gets only sft_loss_coeff times the divergence, an RL
micro-batch only the clipped policy loss, use_kl_loss=False). I could not read the method section's own
equations, so no equation number is cited; the split rule is the repository's.

divlab's version: `samples` (k, default 8: the README's count) completions of the frozen start policy per
training problem, at rlvr.temperature, scored by rlvr.reward; a sample is correct when its reward is > 0 (exact
match: the answer); a problem's pass rate is its fraction of correct samples and it is in D_pef when the pass
rate is >= `pef_threshold` (default 1.0: all k correct, the paper's rule). The rehearsal set is the correct start
samples of D_pef problems (with their per-token log pi_ref), so rlvr.rehearsal_size is not used under a split.
The whole result is one file cached like the rehearsal set (divlab.tasks.rlvr.rehearsal_path, whose hash then
covers the split settings), seeded by the run's seed: every run with the same start reads the same split.
Without rlvr.split (absent, or null) the old behaviour stays (every training prompt gets RL; the rehearsal set
is one start sample per prompt); absent, it also keeps every old run hash (an explicit null enters the hash).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.tasks.rlvr_rollout import MAX_ROWS, rewards, sample_completions, token_logps

SPLIT_DEFAULTS = {"samples": 8, "pef_threshold": 1.0}  # rlvr.split keys and their defaults


def check_split(split) -> dict | None:
    """rlvr.split (absent or null: no split) -> {samples, pef_threshold}; one sentence naming a bad key."""
    if split is None:
        return None
    if isinstance(split, DictConfig):
        split = OmegaConf.to_container(split, resolve=True)
    if not isinstance(split, dict):
        raise ConfigError(
            f"rlvr.split must be a mapping like {{samples: 8, pef_threshold: 1.0}} or null, got {split!r}"
        )
    unknown = sorted(set(split) - set(SPLIT_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"rlvr.split.{unknown[0]} is not a setting of rlvr.split; its settings are "
            f"{', '.join(SPLIT_DEFAULTS)}"
        )
    out = {**SPLIT_DEFAULTS, **split}
    k, t = out["samples"], out["pef_threshold"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"rlvr.split.samples must be an integer >= 1 (start samples per problem), got {k!r}"
        )
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
        raise ConfigError(
            f"rlvr.split.pef_threshold must be a number in (0, 1] (a pass rate; 1.0 = all samples correct), "
            f"got {t!r}"
        )
    return {"samples": k, "pef_threshold": float(t)}


def split_problems(correct: Tensor, pef_threshold: float) -> Tensor:
    """(P, k) bool correctness of k start samples per problem -> (P,) bool: in D_pef (pass rate >= threshold)."""
    return correct.float().mean(dim=1) >= pef_threshold - 1e-9


@torch.no_grad()
def sample_split(
    reference: nn.Module,
    pool: dict,
    *,
    samples: int,  # k start samples per problem
    pef_threshold: float,  # least pass rate of a D_pef problem
    reward: Callable,  # (prompt, completion, answer) -> float
    reward_name: str,  # rlvr.reward, for messages
    tokenizer,  # the data's tokenizer
    temperature: float,  # sampling temperature
    max_new_tokens: int,  # cap on completion tokens
    never: tuple,  # token ids never sampled nor scored
    generator: torch.Generator,  # seeded by the task
    device,  # where the reference runs
) -> dict:
    """k samples of the start policy on every problem of `pool` (tokens, prompt_len, prompts, answers) -> a dict
    of CPU tensors: pef (P,) bool, pass_rate (P,), and the rehearsal rows (tokens, prompt_len, length, ref_logp:
    the correct samples of D_pef problems, grouped by problem)."""
    done = sample_completions(
        reference,
        pool["tokens"].to(device),
        pool["prompt_len"].to(device),
        n=samples,
        tokenizer=tokenizer,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        generator=generator,
    )
    correct = rewards(reward, reward_name, pool["prompts"], pool["answers"], done, samples) > 0
    pef = split_problems(correct.view(-1, samples), pef_threshold)
    rows = torch.nonzero(correct & pef.repeat_interleave(samples), as_tuple=True)[0]
    tokens, mask = done.tokens[rows], done.mask[rows]
    ref_logp = [
        token_logps(
            reference,
            tokens[lo : lo + MAX_ROWS],
            mask[lo : lo + MAX_ROWS],
            temperature=temperature,
            never=never,
        )
        for lo in range(0, len(rows), MAX_ROWS)
    ]
    return {
        "pef": pef.cpu(),
        "pass_rate": correct.view(-1, samples).float().mean(dim=1).cpu(),
        "tokens": tokens.cpu(),
        "prompt_len": done.prompt_len[rows].cpu(),
        "length": done.length[rows].cpu(),
        "ref_logp": (
            torch.cat(ref_logp) if ref_logp else tokens.new_zeros((0, tokens.shape[1] - 1)).float()
        ).cpu(),
    }


def check_split_sets(data: dict, pef_threshold: float, uses_rehearsal: bool, divergence: str) -> None:
    """After the split is sampled or read: D_exp must hold a problem (RL has prompts), and a rehearsal divergence
    needs at least one correct D_pef sample."""
    pef = data["pef"]
    if bool(pef.all()):
        raise ConfigError(
            f"rlvr.split: the start policy solves every training problem at pef_threshold={pef_threshold}, so "
            f"D_exp (the RL prompts) is empty; raise rlvr.split.pef_threshold or rlvr.split.samples"
        )
    if uses_rehearsal and len(data["length"]) == 0:
        raise ConfigError(
            f"rlvr.split: no training problem reaches pef_threshold={pef_threshold}, so D_pef has no rehearsal "
            f"sample for rlvr.divergence={divergence}; lower rlvr.split.pef_threshold"
        )
