"""Preference optimisation (`task=dpo`): a policy against a frozen reference, its start model.

The loss is divlab.objectives.fdpo (f-DPO, Wang et al. 2023): `divergence=reverse_kl` is DPO, `forward_kl`,
`js` and `alpha` (0 < alpha < 1) the paper's other constraints; `dpo.beta` the constraint strength. The
reference is a frozen copy of the policy's start, held outside the module tree (never trained, never in a
checkpoint; a resumed run rebuilds it). Policies: a Hugging Face LM (student=smollm2_*; the start is the model
as built, dpo.init=null) on data=preference (prompt, chosen, rejected; divlab.data.preference), or a divlab GPT
(student=gpt_tiny; divlab.tasks.dpo_policy) on data=preference_arith (divlab.data.preference_arith), whose
start with dpo.init=auto is an MLE model trained once per seed by dpo.init_train on the same arithmetic
problems and cached like a teacher (the mechanism of seqmatch.init and rlvr.init).

Metrics (train/, val/, test/): loss, accuracy (share of preferences with reward margin > 0, %), margin (mean
beta f'(u_w) - beta f'(u_l)), chosen_reward, rejected_reward; val/ and test/ also kl_ref, the mean per-token
KL(policy || reference) over the chosen responses (exact over the vocabulary at each teacher-forced position).
test/ (and val/ with dpo.generate_val) also the generation metrics of divlab.tasks.dpo_eval on the held-out
prompts: exact_match, ece, confidence, distinct_1, distinct_2, distinct_samples, entropy, kl_seq. With
data.datamodule.rejected=sampled the rejected answers are the start model's own wrong samples
(divlab.provision.rejected); test/rejected_fallback is the % of test preferences that kept the perturbed one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from divlab.divergences import get_divergence
from divlab.errors import ConfigError
from divlab.objectives.fdpo import FDPOLoss
from divlab.objectives.lm import action_mask
from divlab.tasks.base import DivlabTask, optimizer_config
from divlab.tasks.dpo_eval import DPOGenerationEval

TERMS = ("loss", "margin", "chosen_reward", "rejected_reward")


def check_settings(d: DictConfig) -> None:
    """dpo.* values, before any model is built."""
    beta = d.get("beta")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < math.inf:
        raise ConfigError(f"dpo.beta must be a finite number > 0, got {beta!r}")
    samples = d.get("samples", 0)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(
            f"dpo.samples must be an integer >= 0 (samples per held-out prompt), got {samples!r}"
        )
    temperature = d.get("temperature", 1.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 < temperature < math.inf
    ):
        raise ConfigError(f"dpo.temperature must be a finite number > 0, got {temperature!r}")


def build(cfg: DictConfig, *, datamodule=None) -> DPOTask:
    """task.builder of task=dpo: the f-DPO loss (divergence, beta), the policy and its frozen copy."""
    from divlab.tasks.classify import optimization
    from divlab.utils.checks import build as build_spec

    check_settings(cfg.dpo)
    if getattr(datamodule, "kind", None) != "preference":
        raise ConfigError(
            f"task=dpo needs preference data (data=preference, or data=preference_arith for a divlab GPT), "
            f"got data={cfg.data.name}"
        )
    loss = FDPOLoss(
        divergence=build_spec(cfg.divergence), beta=cfg.dpo.beta
    )  # refuses a divergence without f'
    if ".hf." in str(cfg.student.model.get("_target_", "")):
        if cfg.dpo.get("init") is not None:
            raise ConfigError("dpo.init starts a divlab GPT; with a Hugging Face student set dpo.init=null")
        policy = hf_policy(cfg, datamodule)
    else:
        from divlab.tasks.dpo_policy import gpt_policy

        policy = gpt_policy(cfg, datamodule)  # dpo.init: its start, trained once and cached
    reference = copy.deepcopy(policy)
    fallback = None
    if getattr(datamodule, "rejected", "perturbed") == "sampled":
        from divlab.provision.rejected import use_sampled_rejected

        start = None
        if cfg.dpo.get("init") is not None:  # the start's identity keys its rejected answers
            recipe = OmegaConf.to_container(cfg.dpo.get("init_train") or {}, resolve=True)
            seed = recipe.get("seed") if recipe.get("seed") is not None else cfg.seed  # who trained it
            start = {"init": cfg.dpo.init, "seed": int(seed), "init_train": recipe}
        fallback = use_sampled_rejected(cfg, reference, datamodule, start=start)
    return DPOTask(
        model=policy,
        reference=reference,
        loss=loss,
        samples=int(cfg.dpo.get("samples", 0)),
        temperature=float(cfg.dpo.get("temperature", 1.0)),
        generate_val=bool(cfg.dpo.get("generate_val", False)),
        max_new_tokens=datamodule.max_response_tokens,
        eval_batch_size=2 * datamodule.batch_size,
        rejected_fallback=None if fallback is None else fallback.get("test"),
        **optimization(cfg),
    )


def hf_policy(cfg: DictConfig, datamodule):
    """The Hugging Face policy as built (its pretrained weights are the start), checked against the data."""
    from divlab.utils.checks import build as build_spec

    if callable(getattr(datamodule, "start_data", None)):
        raise ConfigError(
            "data=preference_arith holds a divlab GPT's character tokens; with a Hugging Face student use "
            "data=preference"
        )
    policy = build_spec(cfg.student.model)
    if not hasattr(policy, "hidden_states") or not hasattr(policy, "output_weight"):
        raise ConfigError(
            "task=dpo needs a causal LM with hidden_states and output_weight (student=smollm2_*)"
        )
    if policy.context_length and policy.context_length < datamodule.max_len:
        raise ConfigError(
            f"student.model has a context of {policy.context_length} tokens, shorter than a prompt and "
            f"response ({datamodule.max_len}); lower data.datamodule.max_*_tokens"
        )
    if len(datamodule.tokenizer) > policy.vocab_size:
        raise ConfigError(
            f"data.datamodule.tokenizer has {len(datamodule.tokenizer)} tokens but student.model only "
            f"{policy.vocab_size} output rows; use the policy's own tokenizer"
        )
    return policy


class DPOTask(DPOGenerationEval, DivlabTask):
    def __init__(
        self,
        *,
        model: nn.Module,  # the policy: a divlab.models.hf.HFCausalLM or a divlab.tasks.dpo_policy.GPTPolicy
        reference: nn.Module,  # the frozen reference (the start model); outside the module tree
        loss: FDPOLoss,  # f-DPO (divergence, beta)
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (stepped per epoch)
        samples: int = 4,  # samples per held-out prompt for distinct-n, entropy, kl_seq (0: none)
        temperature: float = 1.0,  # their sampling temperature
        generate_val: bool = False,  # also the generation metrics on val, every epoch
        max_new_tokens: int = 32,  # longest generated response (the data's max_response_tokens)
        eval_batch_size: int = 16,  # prompts per generation / scoring batch
        rejected_fallback: float | None = None,  # % of test rejected answers that are perturbed, not sampled
        seed: int = 0,  # reseeds torch every epoch; seeds the metric samples
    ):
        super().__init__(seed=seed, task_name="dpo", best_metric="val/loss", best_mode="min")
        self.model, self.loss = model, loss
        self.hold_frozen("reference", reference)
        self.kl_ref = get_divergence("reverse_kl")  # the metric kl_ref, not the loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.samples, self.temperature, self.generate_val = samples, temperature, generate_val
        self.max_new_tokens, self.eval_batch_size = max_new_tokens, eval_batch_size
        self.rejected_fallback = rejected_fallback

    @property
    def reference(self) -> nn.Module:
        return self.frozen("reference")

    # ------------------------------------------------------------------ log-probabilities
    @staticmethod
    def response_logits(model: nn.Module, batch: dict, mask: Tensor) -> Tensor:
        """(N, V) float32 logits at the N response positions of the batch (mask (2B, L-1))."""
        tokens, length = batch["tokens"], batch["length"]
        attention = torch.arange(tokens.shape[1], device=tokens.device)[None] < length[:, None]
        hidden = model.hidden_states(tokens, attention)[:, :-1][mask]
        return hidden.float() @ model.output_weight.float().T

    @staticmethod
    def sequence_logps(logits: Tensor, batch: dict, mask: Tensor) -> Tensor:
        """(2B,) summed log-probabilities of each row's response tokens."""
        targets = batch["tokens"][:, 1:][mask]
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
        return torch.zeros(mask.shape[0], dtype=logits.dtype, device=logits.device).index_add(
            0, rows, token_logps
        )

    def pair_terms(self, batch: dict, *, with_kl: bool = False) -> dict[str, Tensor]:
        """The f-DPO terms of a batch of B preferences (2B rows: chosen, then rejected); with_kl adds kl_ref
        (the summed per-token KL(policy || reference) over the chosen responses) and n_tokens."""
        mask = action_mask(batch["tokens"].shape, prompt_len=batch["prompt_len"], length=batch["length"])
        logits = self.response_logits(self.model, batch, mask)
        with torch.no_grad():
            ref_logits = self.response_logits(self.reference, batch, mask)
        policy, ref = self.sequence_logps(logits, batch, mask), self.sequence_logps(ref_logits, batch, mask)
        b = policy.shape[0] // 2
        terms = self.loss(
            policy_chosen=policy[:b], policy_rejected=policy[b:], ref_chosen=ref[:b], ref_rejected=ref[b:]
        )
        out = {
            "loss": terms["loss"],
            "accuracy": 100.0 * terms["accuracy"],
            **{k: terms[k].mean() for k in ("margin", "chosen_reward", "rejected_reward")},
        }
        if with_kl:
            chosen = (torch.arange(mask.shape[0], device=mask.device) < b)[:, None].expand_as(mask)[mask]
            # the library's KL(Q||P), Q = model = the policy, P = target = the reference, per position
            out["kl_ref"] = self.kl_ref(ref_logits[chosen], logits[chosen].detach()).sum()
            out["n_tokens"] = chosen.sum()
        return out

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        terms = self.pair_terms(batch)
        b = int(batch["index"].shape[0])
        for name in (*TERMS, "accuracy"):
            self.track(name, terms[name], b)
        return terms["loss"]

    def _log_eval(self, stage: str, batch) -> None:
        terms = self.pair_terms(batch, with_kl=True)
        b = int(batch["index"].shape[0])
        for name in (*TERMS, "accuracy"):
            self.log(f"{stage}/{name}", terms[name], batch_size=b, sync_dist=True)
        n = max(int(terms["n_tokens"]), 1)
        self.log(f"{stage}/kl_ref", terms["kl_ref"] / n, batch_size=n, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._log_eval("val", batch)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/loss")
        if value is not None:
            self.update_best(float(value))
        if self.generate_val:
            self.log_generation_metrics("val")

    def test_step(self, batch, batch_idx):
        self._log_eval("test", batch)

    def on_test_epoch_end(self) -> None:
        self.log_generation_metrics("test")
        if self.rejected_fallback is not None:
            self.log("test/rejected_fallback", float(self.rejected_fallback))

    def configure_optimizers(self):
        return optimizer_config(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)

    def checkpoint_meta(self) -> dict:
        return {"vocab_size": int(self.model.vocab_size)}
