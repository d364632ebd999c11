"""RL with verifiable rewards (`task=rlvr`): GRPO on arithmetic, with the divergence term of DPH-RL.

The loss is divlab.objectives.grpo (GRPO, Shao et al. 2024; DPH-RL, Li et al. 2025): every step draws
`rlvr.prompts_per_step` training prompts of the operations `rlvr.train_ops`, samples `rlvr.group_size` (G)
completions of each from the current policy (pi_old), scores them with the verifiable reward (`rlvr.reward`;
divlab.tasks.rlvr_rollout) and takes `rlvr.updates_per_batch` optimiser steps on the clipped GRPO objective
(Eq. 3 there) with the same samples (the first step has ratio 1; later ones are clipped at `rlvr.clip`). The
divergence term (`rlvr.divergence`, weight `rlvr.beta`) is none, reverse_kl (k3 on the policy's samples, GRPO's
default) or DPH-RL's forward_kl / js on `rlvr.rehearsal_batch` rows of the rehearsal set. With the optional
`rlvr.split` (absent: off) the training problems are split once by the start's pass rate into D_pef, whose correct
start samples are the rehearsal set, and D_exp, the only RL prompts (DPH-RL; divlab.tasks.rlvr_split).

Start policy and reference. `rlvr.init: auto` starts from an MLE model of the student's architecture trained
once by `rlvr.init_train` on the run's data and cached like a teacher (seqmatch.init's mechanism,
`start_from_behaviour_cloning`: the same recipe and data share one cached model with SequenceMatch); a path
loads a divlab checkpoint; null keeps the student as built (a pretrained Hugging Face student). The reference
pi_ref is that start, frozen (outside the module tree: never trained, never in a checkpoint). The start is
provisioned in `setup` (so building the task trains nothing), before a resumed run restores its weights.

Rehearsal set. Sampled ONCE from the start policy: `rlvr.rehearsal_size` completions (one per training prompt
of train_ops, in a seeded order, cycling when there are fewer prompts) with their per-token log pi_ref, saved
as <paths.output_root>/rehearsal/<hash>.pt, the hash covering what determines it (student, init, init_train,
data, train_ops, size, temperature, max_new_tokens, seed). Every run and epoch with the same hash reads it.

Data: data=arith (divlab.data.arithmetic). The training split's problems of train_ops are the RL prompts; the
data's train loader only paces the steps (an epoch is as many RL steps as it has batches). Metrics on the
held-out val/test problems, each sampled `rlvr.n_eval_samples` times at rlvr.temperature: pass_at_<k> for k in
{1} + rlvr.pass_k on problems of train_ops (unbiased estimator of Chen et al. 2021, divlab.metrics.pass_at_k)
and other_pass_at_1 on the data's other operations, a skill the start model had that RL does not train
(forgetting shows as a drop). The test also scores the start model on the same problems (start_pass_at_<k>,
start_other_pass_at_1) and logs forgetting = start_other_pass_at_1 - other_pass_at_1. Training terms: loss,
reward, surrogate, divergence, clip_fraction, ended (share of completions that emitted <eos>).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from divlab.errors import ConfigError
from divlab.objectives.grpo import DIVERGENCES, GRPOLoss, group_advantages
from divlab.objectives.lm import action_mask
from divlab.tasks.base import DivlabTask, epoch_seed, optimizer_config
from divlab.tasks.rlvr_eval import RLVREvaluation
from divlab.tasks.rlvr_rollout import (
    check_reward,
    load_or_sample_rehearsal,
    never_ids,
    op_of,
    resolve_reward,
    rewards,
    sample_completions,
    token_logps,
)
from divlab.tasks.rlvr_split import check_split, check_split_sets, sample_split
from divlab.utils.hashing import stable_hash

INTS = {  # rlvr.* integer settings and their least value
    "group_size": 2,
    "prompts_per_step": 1,
    "updates_per_batch": 1,
    "max_new_tokens": 1,
    "n_eval_samples": 1,
    "rehearsal_size": 1,
    "rehearsal_batch": 1,
}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_settings(r: DictConfig) -> None:
    """rlvr.* values, before any model is built; one sentence naming the key."""
    for key, low in INTS.items():
        value = r.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            why = " (GRPO normalises rewards within a group of samples)" if key == "group_size" else ""
            raise ConfigError(f"rlvr.{key} must be an integer >= {low}{why}, got {value!r}")
    if r.get("divergence") not in DIVERGENCES:
        raise ConfigError(
            f"rlvr.divergence={r.get('divergence')!r} is not known; choose one of {', '.join(DIVERGENCES)}"
        )
    beta = r.get("beta")
    if not _number(beta) or not 0 <= beta < float("inf"):
        raise ConfigError(f"rlvr.beta must be a finite number >= 0, got {beta!r}")
    if not _number(r.get("clip")) or not 0 < r.clip < 1:
        raise ConfigError(f"rlvr.clip must be a number in (0, 1), got {r.get('clip')!r}")
    if not _number(r.get("temperature")) or not 0 < r.temperature < float("inf"):
        raise ConfigError(f"rlvr.temperature must be a finite number > 0, got {r.get('temperature')!r}")
    ks = r.get("pass_k")
    if not isinstance(ks, (list, ListConfig)) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in ks
    ):
        raise ConfigError(f"rlvr.pass_k must be a list of integers, e.g. [1, 8, 32], got {ks!r}")
    bad = [k for k in ks if not 1 <= k <= r.n_eval_samples]
    if bad:
        raise ConfigError(
            f"rlvr.pass_k has k={bad[0]} but pass@k needs 1 <= k <= rlvr.n_eval_samples ({r.n_eval_samples})"
        )


def rehearsal_path(cfg: DictConfig) -> Path:
    """<paths.output_root>/rehearsal/<hash of what determines the rehearsal set>.pt"""
    r = cfg.rlvr
    key = {
        k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
        for k, v in {
            "student": cfg.student.model,
            "init": r.init,
            "init_train": r.get("init_train"),
            "data": cfg.data,
            "train_ops": r.train_ops,
            "size": r.rehearsal_size,
            "temperature": r.temperature,
            "max_new_tokens": r.max_new_tokens,
            "seed": cfg.seed,
        }.items()
    }
    split = check_split(r.get("split"))
    if split is not None:  # only then: the paths (and hashes) of runs without a split are unchanged
        key["split"] = split
    return Path(cfg.paths.output_root) / "rehearsal" / f"{stable_hash(key)}.pt"


def build(cfg: DictConfig, *, datamodule=None) -> RLVRTask:
    """task.builder of task=rlvr: checks every setting and the reward; the start is provisioned in setup."""
    from divlab.tasks.classify import optimization
    from divlab.tasks.lm import build_student
    from divlab.tasks.seqmatch import start_from_behaviour_cloning

    r = cfg.rlvr
    check_settings(r)
    ops = getattr(datamodule, "ops", None)
    if ops is None or not hasattr(datamodule, "dataset"):
        raise ConfigError(
            f"task=rlvr needs arithmetic data with verifiable answers (data=arith), got data={cfg.data.name}"
        )
    train_ops = str(r.train_ops)
    if not train_ops or set(train_ops) - set(ops):
        raise ConfigError(
            f"rlvr.train_ops={train_ops!r} must be a non-empty subset of the data's operations "
            f"(data.datamodule.ops={ops!r})"
        )
    reward = resolve_reward(r.reward)
    texts = [t for t in datamodule.dataset("train").texts if t[0] and op_of(t[0]) in train_ops]
    if not texts:
        raise ConfigError(
            f"the training split has no problem of rlvr.train_ops={train_ops!r}; raise data.datamodule.n_train"
        )
    check_reward(reward, str(r.reward), texts[0][0], texts[0][1])
    model = build_student(cfg, datamodule)
    if r.init is not None and getattr(datamodule.tokenizer, "kind", None) == "hf":
        raise ConfigError("rlvr.init starts a divlab GPT; with a Hugging Face student set rlvr.init=null")
    start = None if r.init is None else functools.partial(start_from_behaviour_cloning, cfg, section="rlvr")
    loss = GRPOLoss(clip=r.clip, beta=r.beta, divergence=r.divergence)
    split = check_split(r.get("split"))
    return RLVRTask(
        model=model,
        tokenizer=datamodule.tokenizer,
        loss=loss,
        reward=reward,
        reward_name=str(r.reward),
        train_ops=train_ops,
        start=start,
        rehearsal_path=rehearsal_path(cfg) if loss.uses_rehearsal or split else None,
        split=split,
        **{k: r[k] for k in INTS},
        temperature=float(r.temperature),
        pass_k=sorted({1, *r.pass_k}),
        **optimization(cfg),
    )


class RLVRTask(RLVREvaluation, DivlabTask):
    reseed_each_epoch = False  # sampling draws from generators seeded by (seed, step) instead

    def __init__(
        self,
        *,
        model: nn.Module,  # the policy: a divlab GPT (or an HFCausalLM with rlvr.init=null)
        tokenizer,  # the data's tokenizer
        loss: GRPOLoss,  # clip, beta, divergence
        reward: Callable[[str, str, str], float],  # (prompt, completion, answer) -> float
        reward_name: str,  # rlvr.reward, for messages
        train_ops: str,  # operations whose problems RL trains on; the others measure forgetting
        start: Callable[[nn.Module], None] | None,  # loads the start weights into the policy (None: as built)
        rehearsal_path: Path | None,  # the cached rehearsal set (forward_kl, js) or split; None: not used
        split: dict | None = None,  # rlvr.split {samples, pef_threshold} (DPH-RL's D_pef / D_exp); None: off
        group_size: int = 8,  # G samples per prompt
        prompts_per_step: int = 16,  # prompts per sampling round
        updates_per_batch: int = 1,  # optimiser steps per sampling round (mu of GRPO)
        max_new_tokens: int = 8,  # cap on completion tokens (<eos> included)
        n_eval_samples: int = 32,  # samples per held-out problem (pass@k needs k <= n)
        rehearsal_size: int = 512,  # completions in the rehearsal set
        rehearsal_batch: int = 64,  # rehearsal rows per optimiser step
        temperature: float = 1.0,  # sampling temperature of training, rehearsal and evaluation
        pass_k: list[int] = (1,),  # the k of pass@k
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (stepped per epoch)
        seed: int = 0,  # seeds every sampling generator
    ):
        super().__init__(seed=seed, task_name="rlvr", best_metric="val/pass_at_1", best_mode="max")
        self.model, self.tokenizer, self.loss = model, tokenizer, loss
        self.reward, self.reward_name, self.train_ops, self.start = reward, reward_name, train_ops, start
        self.rehearsal_path, self.split = rehearsal_path, split
        self.exp_idx: torch.Tensor | None = None  # D_exp: indices of the RL prompts under a split (None: all)
        self.pef_fraction: float | None = None  # |D_pef| / problems, logged as train/pef_fraction
        self.group_size, self.prompts_per_step = group_size, prompts_per_step
        self.updates_per_batch, self.max_new_tokens = updates_per_batch, max_new_tokens
        self.n_eval_samples, self.temperature, self.pass_k = n_eval_samples, temperature, list(pass_k)
        self.rehearsal_size, self.rehearsal_batch = rehearsal_size, rehearsal_batch
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.never = never_ids(tokenizer)
        self.hold_frozen("reference", None)
        self.rehearsal: dict | None = None  # tokens, prompt_len, length, ref_logp (CPU until used)
        self._groups: dict | None = None  # the current sampling round
        self._uses_left = 0
        self._prompts = None  # (tokens, prompt_len, answers, prompts) of the RL training problems

    @property
    def reference(self) -> nn.Module:
        return self.frozen("reference")

    def generator(self, count: int, stream: int = 0, *, device="cpu") -> torch.Generator:
        """A generator seeded by (seed, count, rank, stream): count is the step (training), 0 (rehearsal) or the
        batch index (evaluation); on `device` for sampling, on the CPU for index draws."""
        g = torch.Generator(device=device)
        g.manual_seed(epoch_seed(self.seed, count, self.global_rank) * 7 + stream)
        return g

    # ------------------------------------------------------------------ start, reference, rehearsal
    def setup(self, stage: str) -> None:
        if self.reference is None:
            if self.start is not None:
                self.start(self.model)
            self.hold_frozen("reference", copy.deepcopy(self.model))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.split is not None and self.exp_idx is None:
            data = load_or_sample_rehearsal(self.rehearsal_path, self.sample_split)
            check_split_sets(data, self.split["pef_threshold"], self.loss.uses_rehearsal, self.loss.name)
            self.exp_idx = torch.nonzero(~data["pef"], as_tuple=True)[0]
            self.pef_fraction = float(data["pef"].float().mean())
            self.rehearsal = data if self.loss.uses_rehearsal else None
        elif self.rehearsal_path is not None and self.rehearsal is None:
            self.rehearsal = load_or_sample_rehearsal(self.rehearsal_path, self.sample_rehearsal)

    def training_prompts(self) -> dict:
        if self._prompts is None:
            ds = self.trainer.datamodule.dataset("train")
            keep = [i for i, (p, _) in enumerate(ds.texts) if op_of(p) in self.train_ops]
            self._prompts = {
                "tokens": ds.tokens[keep],
                "prompt_len": ds.prompt_len[keep],
                "prompts": [ds.texts[i][0] for i in keep],
                "answers": [ds.texts[i][1] for i in keep],
            }
        return self._prompts

    @torch.no_grad()
    def sample_rehearsal(self) -> dict:
        """rehearsal_size completions of the start policy (the frozen reference), one per training prompt."""
        pool = self.training_prompts()
        order = torch.randperm(len(pool["answers"]), generator=self.generator(0, stream=1))
        idx = order.repeat(self.rehearsal_size // len(order) + 1)[: self.rehearsal_size]
        ref = self.reference
        done = sample_completions(
            ref,
            pool["tokens"][idx].to(self.device),
            pool["prompt_len"][idx].to(self.device),
            n=1,
            tokenizer=self.tokenizer,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            generator=self.generator(0, stream=2, device=self.device),
        )
        ref_logp = token_logps(ref, done.tokens, done.mask, temperature=self.temperature, never=self.never)
        return {
            "tokens": done.tokens.cpu(),
            "prompt_len": done.prompt_len.cpu(),
            "length": done.length.cpu(),
            "ref_logp": ref_logp.cpu(),
        }

    def sample_split(self) -> dict:
        """DPH-RL's D_pef / D_exp split and D_pef's rehearsal rows, from the start policy (rlvr_split)."""
        return sample_split(
            self.reference,
            self.training_prompts(),
            **self.split,
            reward=self.reward,
            reward_name=self.reward_name,
            tokenizer=self.tokenizer,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            never=self.never,
            generator=self.generator(0, stream=5, device=self.device),
            device=self.device,
        )

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sample_groups(self) -> dict:
        """One sampling round: prompts_per_step prompts x G completions, rewards, advantages, old/ref log-probs."""
        pool, step = self.training_prompts(), self.global_step
        rl = self.exp_idx  # under a split only D_exp problems get RL; None: every problem
        count = len(pool["answers"]) if rl is None else len(rl)
        idx = torch.randint(count, (self.prompts_per_step,), generator=self.generator(step))
        idx = idx if rl is None else rl[idx]
        done = sample_completions(
            self.model,
            pool["tokens"][idx].to(self.device),
            pool["prompt_len"][idx].to(self.device),
            n=self.group_size,
            tokenizer=self.tokenizer,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            generator=self.generator(step, stream=3, device=self.device),
        )
        prompts, answers = [pool["prompts"][i] for i in idx], [pool["answers"][i] for i in idx]
        reward = rewards(self.reward, self.reward_name, prompts, answers, done, self.group_size)

        def logp(model):
            return token_logps(model, done.tokens, done.mask, temperature=self.temperature, never=self.never)

        was_training = self.model.training
        self.model.eval()  # pi_old as sampled (no dropout)
        old_logp = logp(self.model)
        self.model.train(was_training)
        return {
            "done": done,
            "reward": reward,
            "advantages": group_advantages(reward, self.group_size),
            "old_logp": old_logp,
            "ref_logp": logp(self.reference) if self.loss.needs_reference else None,
        }

    def rehearsal_terms(self) -> dict:
        if self.rehearsal is None:
            return {}
        rh = self.rehearsal
        rows = torch.randint(
            len(rh["length"]), (self.rehearsal_batch,), generator=self.generator(self.global_step, 4)
        )
        length = rh["length"][rows].to(self.device)
        tokens = rh["tokens"][rows][:, : int(length.max())].to(self.device)
        prompt_len = rh["prompt_len"][rows].to(self.device)
        mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
        return {
            "rehearsal_logp": token_logps(
                self.model, tokens, mask, temperature=self.temperature, never=self.never
            ),
            "rehearsal_ref_logp": rh["ref_logp"][rows][:, : tokens.shape[1] - 1].to(self.device),
            "rehearsal_mask": mask,
        }

    def training_step(self, batch, batch_idx):
        if self._uses_left == 0:
            self._groups, self._uses_left = self.sample_groups(), self.updates_per_batch
            g = self._groups
            n = len(g["reward"])
            self.track("reward", g["reward"].mean(), n)
            self.track("ended", g["done"].ended.float().mean(), n)
            if self.pef_fraction is not None:
                self.track("pef_fraction", torch.tensor(self.pef_fraction), 1)
        self._uses_left -= 1
        g = self._groups
        done = g["done"]
        logp = token_logps(self.model, done.tokens, done.mask, temperature=self.temperature, never=self.never)
        terms = self.loss(
            logp=logp,
            old_logp=g["old_logp"],
            advantages=g["advantages"],
            mask=done.mask,
            ref_logp=g["ref_logp"],
            **self.rehearsal_terms(),
        )
        n = len(g["reward"])
        for name in ("loss", "surrogate", "divergence", "clip_fraction"):
            self.track(name, terms[name].detach(), n)
        return terms["loss"]

    def configure_optimizers(self):
        return optimizer_config(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)

    def checkpoint_meta(self) -> dict:
        return {"vocab_size": int(self.model.vocab_size), "tokenizer": self.tokenizer.state_dict()}
