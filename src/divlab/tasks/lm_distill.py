"""LLM distillation (`task=lm_distill`): a Hugging Face student against a frozen Hugging Face teacher.

The loss is divlab.objectives.lm_distill, eq. (1): ce_weight * NLL(response) + kd_weight * D(teacher ||
student) per response token, with any per-position divergence of the library (`divergence=`) and a
temperature. Responses come from the data (`lm_distill.responses: data`) or from the teacher, generated
once per (teacher, prompts, settings) and cached (`teacher`, sequence-level KD; divlab.provision.responses).
With `lm_distill.on_policy_fraction` = lambda > 0, each training batch is, with probability lambda, replaced
by responses the student samples to the same prompts, which the teacher scores (GKD, Agarwal et al. 2024);
such batches have no NLL term. One code path serves every divergence and both modes.

Teacher outputs (`lm_distill.teacher_outputs`): online (a teacher forward every step), cached (its hidden
states on the fixed rows, exact; divlab.provision.teacher_states) or topk (its top-`lm_distill.topk` tokens
and tail mass per position, divlab.provision.teacher_topk): then the teacher is built only while a cache it
writes (top-k, or teacher responses) is missing, and the task never holds it: no on-policy batches and no
test/teacher_nll.

Metrics: val/loss (the student's NLL of the validation responses), val/kd, test/nll (NLL of the reference
responses), train/tokens_per_s, and the generation metrics of divlab.tasks.lm_distill_eval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.objectives.lm import action_mask
from divlab.objectives.lm_distill import TokenDistillLoss
from divlab.tasks.base import DivlabTask, epoch_seed, optimizer_config
from divlab.tasks.lm_distill_eval import LMDistillEval, prompt_rows, response_batch, until_eos  # noqa: F401


def check_settings(d: DictConfig) -> None:
    """lm_distill.* values, before any model is built."""

    def number(key, low, high=math.inf):
        value = d.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not low <= value <= high
            or not math.isfinite(value)
        ):
            raise ConfigError(f"lm_distill.{key} must be a number in [{low}, {high}], got {value!r}")
        return value

    number("ce_weight", 0)
    number("kd_weight", 0)
    number("on_policy_fraction", 0, 1)
    if number("temperature", 0) <= 0:
        raise ConfigError(f"lm_distill.temperature must be > 0, got {d.temperature!r}")
    if d.ce_weight == 0 and d.kd_weight == 0:
        raise ConfigError(
            "lm_distill.ce_weight and lm_distill.kd_weight are both 0: nothing would be trained; "
            "set one of them > 0"
        )
    if d.on_policy_fraction > 0 and d.kd_weight == 0:
        raise ConfigError(
            "lm_distill.on_policy_fraction > 0 needs lm_distill.kd_weight > 0: on-policy batches "
            "are scored by the teacher only"
        )
    if d.responses not in ("data", "teacher"):
        raise ConfigError(f"lm_distill.responses must be data or teacher, got {d.responses!r}")
    if d.teacher_outputs not in ("cached", "online", "topk"):
        raise ConfigError(
            f"lm_distill.teacher_outputs must be cached, online or topk, got {d.teacher_outputs!r}"
        )
    if d.teacher_outputs == "topk":
        k = d.get("topk")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"lm_distill.topk must be an integer >= 1, got {k!r}")
        if d.on_policy_fraction > 0:
            raise ConfigError(
                "lm_distill.on_policy_fraction > 0 needs a live teacher to score the student's samples, "
                "but lm_distill.teacher_outputs=topk runs without one; set teacher_outputs=cached"
            )
    for key in ("max_new_tokens", "eval_batch_size", "response_batch_size"):
        value = d.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"lm_distill.{key} must be an integer >= 1, got {value!r}")
    if not isinstance(d.t_squared, bool):
        raise ConfigError(f"lm_distill.t_squared must be true or false, got {d.t_squared!r}")


def checked_teacher(cfg: DictConfig, student, *, needed_context: int) -> tuple[nn.Module, bool]:
    """(the frozen teacher, whether it shares the student's tokenizer), checked against the student."""
    from divlab.models.hf import check_same_tokenizer
    from divlab.provision.teacher import provision_teacher
    from divlab.utils.checks import build as build_spec

    teacher = provision_teacher(cfg, build_spec(cfg.teacher.model))
    try:
        check_same_tokenizer(teacher, student, teacher_key="teacher.model", student_key="student.model")
        shared_vocab = True
    except ConfigError:
        if cfg.lm_distill.kd_weight > 0:  # token-level KD compares two next-token distributions
            raise
        shared_vocab = False  # sequence-level KD only: the teacher reads and writes text in its own tokens
    check_context("teacher.model", teacher.context_length, needed_context)
    return teacher, shared_vocab


def check_context(key: str, context: int, needed: int) -> None:
    if context < needed:
        raise ConfigError(
            f"{key} has a context of {context} tokens, shorter than a prompt and response ({needed}); "
            f"lower data.datamodule.max_*_tokens"
        )


def build(cfg: DictConfig, *, datamodule=None) -> LMDistillTask:
    """task.builder of task=lm_distill: student, frozen teacher (same tokenizer), teacher responses, loss.
    With teacher_outputs=topk the teacher is built only to write a missing cache, then dropped."""
    from divlab.provision.responses import teacher_responses
    from divlab.provision.teacher_states import teacher_states
    from divlab.provision.teacher_topk import check_student, teacher_topk
    from divlab.tasks.classify import optimization
    from divlab.utils.checks import build as build_spec

    d = cfg.lm_distill
    check_settings(d)
    if getattr(datamodule, "kind", None) != "instruct":
        raise ConfigError(
            f"task=lm_distill needs prompt/response data (data=instruct), got data={cfg.data.name}"
        )
    divergence = build_spec(cfg.divergence)
    if getattr(divergence, "kind", None) != "categorical":
        raise ConfigError(
            f"divergence={cfg.divergence.name} is not a per-token divergence between two "
            f"distributions; choose e.g. divergence=forward_kl"
        )
    topk = d.teacher_outputs == "topk"
    if topk and getattr(divergence, "needs_labels", False):
        raise ConfigError(
            f"divergence={cfg.divergence.name} reads class labels over the whole vocabulary, which "
            f"lm_distill.teacher_outputs=topk does not keep; choose another divergence or teacher_outputs=cached"
        )
    student = build_spec(cfg.student.model)
    needed = datamodule.max_len + d.max_new_tokens
    check_context("student.model", student.context_length, needed)
    held: dict = {}

    def get_teacher() -> nn.Module:  # built on first use only
        if "teacher" not in held:
            held["teacher"], held["shared_vocab"] = checked_teacher(cfg, student, needed_context=needed)
        return held["teacher"]

    if not topk:
        get_teacher()
    kwargs = {"max_new_tokens": d.max_new_tokens, "batch_size": d.response_batch_size}
    if d.responses == "teacher":
        for split in ("train", "val"):
            datamodule.use_responses(split, teacher_responses(cfg, get_teacher, datamodule, split, **kwargs))
    test_responses = teacher_responses(cfg, get_teacher, datamodule, "test", **kwargs)
    states = topk_caches = None
    if topk and d.kd_weight > 0:  # the teacher's top-k over fixed rows, once; later runs never build it
        topk_caches = {
            split: teacher_topk(
                cfg,
                get_teacher,
                datamodule,
                split,
                k=d.topk,
                temperature=d.temperature,
                batch_size=d.response_batch_size,
            )
            for split in ("train", "val")
        }
        check_student(topk_caches["train"], student, needed_context=needed)
    if d.teacher_outputs == "cached" and d.kd_weight > 0:  # the teacher's pass over fixed rows, once
        states = {
            split: teacher_states(cfg, get_teacher(), datamodule, split, batch_size=d.response_batch_size)
            for split in ("train", "val")
        }
    loss = TokenDistillLoss(
        divergence=divergence,
        ce_weight=d.ce_weight,
        kd_weight=d.kd_weight,
        temperature=d.temperature,
        t_squared=d.t_squared,
    )
    teacher, shared_vocab = (None, True) if topk else (held["teacher"], held["shared_vocab"])
    held.clear()  # topk: a teacher built to write a cache is freed here
    return LMDistillTask(
        model=student,
        teacher=teacher,
        loss=loss,
        on_policy_fraction=d.on_policy_fraction,
        sample_temperature=d.sample_temperature,
        max_new_tokens=d.max_new_tokens,
        eval_batch_size=d.eval_batch_size,
        teacher_states=states,
        teacher_topk=topk_caches,
        run_dir=cfg.get("run_dir"),
        test_teacher_responses=test_responses,
        shared_vocab=shared_vocab,
        **optimization(cfg),
    )


class LMDistillTask(LMDistillEval, DivlabTask):
    def __init__(
        self,
        *,
        model: nn.Module,  # the student, a divlab.models.hf.HFCausalLM
        teacher: nn.Module | None,  # the frozen teacher (same tokenizer), outside the module tree; None: topk
        loss: TokenDistillLoss,  # eq. (1)
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (stepped per epoch)
        seed: int = 0,  # reseeds torch every epoch; draws the on-policy batches
        on_policy_fraction: float = 0.0,  # lambda: share of batches whose responses the student samples
        sample_temperature: float = 1.0,  # temperature of those samples
        max_new_tokens: int = 48,  # tokens sampled on-policy and generated at test time
        eval_batch_size: int = 16,  # prompts per generation batch at test time
        test_teacher_responses: list[str] | None = None,  # the teacher's greedy test responses
        teacher_states: dict
        | None = None,  # split -> per-example teacher hidden states (provision.teacher_states)
        teacher_topk: dict | None = None,  # split -> provision.teacher_topk.TopkCache of the data rows
        shared_vocab: bool = True,  # teacher and student share a tokenizer (else no test/teacher_nll)
        run_dir: str | None = None,
    ):  # responses.jsonl goes here (rank 0); None: not written
        super().__init__(seed=seed, task_name="lm_distill", best_metric="val/loss", best_mode="min")
        self.model, self.loss = model, loss
        self.hold_frozen("teacher", teacher)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.on_policy_fraction, self.sample_temperature = (
            float(on_policy_fraction),
            float(sample_temperature),
        )
        self.max_new_tokens, self.eval_batch_size = int(max_new_tokens), int(eval_batch_size)
        self.test_teacher_responses, self.run_dir = test_teacher_responses, run_dir
        self.teacher_states, self.shared_vocab = teacher_states or {}, shared_vocab
        self.teacher_topk = teacher_topk or {}
        self._tokens_seen, self._epoch_start = 0, 0.0

    @property
    def teacher(self) -> nn.Module | None:
        return self.frozen("teacher")

    # ------------------------------------------------------------------ the loss of a batch
    def response_terms(
        self, batch: dict, *, split: str, use_ce: bool = True, use_kd: bool = True
    ) -> tuple[dict, Tensor]:
        tokens, length = batch["tokens"], batch["length"]
        mask = action_mask(tokens.shape, prompt_len=batch["prompt_len"], length=length)
        attention = torch.arange(tokens.shape[1], device=tokens.device)[None] < length[:, None]
        hidden = self.model.hidden_states(tokens, attention)[:, :-1][mask]
        teacher_hidden = teacher_weight = topk = None
        if use_kd and self.loss.kd_weight > 0:
            topk = self.cached_teacher_topk(batch, split, int(mask.sum()))
            teacher_hidden = (
                None if topk is not None else self.cached_teacher_hidden(batch, split, int(mask.sum()))
            )
            if topk is None and self.teacher is None:
                raise RuntimeError(f"a {split} batch has no cached teacher top-k and no teacher is held")
            if teacher_hidden is None and topk is None:
                with torch.no_grad():
                    teacher_hidden = self.teacher.hidden_states(tokens, attention)[:, :-1][mask]
            teacher_weight = None if topk is not None else self.teacher.output_weight
        terms = self.loss(
            student_hidden=hidden,
            student_weight=self.model.output_weight,
            targets=tokens[:, 1:][mask],
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            teacher_topk=topk,
            use_ce=use_ce,
            use_kd=use_kd,
        )
        return terms, mask.sum()

    def cached_teacher_hidden(self, batch: dict, split: str, n: int) -> Tensor | None:
        """The teacher's hidden states of a data batch's response positions from the cache, in mask order;
        None for rows the cache does not hold (on-policy samples carry no "index")."""
        states = self.teacher_states.get(split)
        if states is None or "index" not in batch:
            return None
        hidden = torch.cat([states[i] for i in batch["index"].tolist()]).to(self.device)
        if len(hidden) != n:
            raise RuntimeError(
                f"the cached teacher states of {split} hold {len(hidden)} positions for a batch with {n}; "
                f"the data changed under the cache: run again with lm_distill.teacher_outputs=online"
            )
        return hidden

    def cached_teacher_topk(self, batch: dict, split: str, n: int) -> tuple | None:
        """(ids, log-probabilities, log tail mass) of a data batch's response positions from the top-k
        cache, in mask order; None when the split has no cache."""
        cache = self.teacher_topk.get(split)
        if cache is None or "index" not in batch:
            return None
        out = tuple(t.to(self.device) for t in cache.rows(batch["index"].tolist()))
        if len(out[0]) != n:
            raise RuntimeError(
                f"the teacher top-k cache of {split} holds {len(out[0])} positions for a batch with {n}; "
                f"the data changed under the cache: delete {cache.path}"
            )
        return out

    def on_policy_now(self) -> bool:
        if self.on_policy_fraction <= 0:
            return False
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.global_step, self.global_rank))
        return bool(torch.rand((), generator=g) < self.on_policy_fraction)

    @torch.no_grad()
    def student_samples(self, batch: dict) -> dict:
        """The batch's prompts with responses the student samples (GKD's on-policy data)."""
        prompts = [row[: int(p)].tolist() for row, p in zip(batch["tokens"], batch["prompt_len"])]
        width = max(len(p) for p in prompts)
        pad = self.model.pad_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        was_training = self.model.training
        self.model.eval()
        new = self.model.generate(
            ids.to(self.device),
            attention.to(self.device),
            max_new_tokens=self.max_new_tokens,
            temperature=self.sample_temperature,
        )
        self.model.train(was_training)
        responses = [
            until_eos(r, eos_id=self.model.eos_id, pad_id=pad) or [self.model.eos_id] for r in new.tolist()
        ]
        return {k: v.to(self.device) for k, v in response_batch(prompts, responses, pad_id=pad).items()}

    # ------------------------------------------------------------------ training and validation
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._tokens_seen, self._epoch_start = 0, time.time()

    def training_step(self, batch, batch_idx):
        on_policy = self.on_policy_now()
        if on_policy:
            batch = self.student_samples(batch)
        terms, n = self.response_terms(batch, split="train", use_ce=not on_policy)
        self._tokens_seen += int(batch["length"].sum())
        for name in ("loss", "ce", "kd"):
            self.track(name, terms[name], n)
        self.track("on_policy", torch.tensor(float(on_policy)), 1)
        return self.global_token_mean(terms["loss"], n)

    def global_token_mean(self, loss: Tensor, n: Tensor) -> Tensor:
        """loss * n_rank * world / n_all: the ranks' mean gradient is then that of the mean over all tokens."""
        if self.trainer.world_size == 1:
            return loss
        total = self.trainer.strategy.reduce(n.detach().float(), reduce_op="sum")
        return loss * (n * self.trainer.world_size / total)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        elapsed = max(time.time() - self._epoch_start, 1e-9)
        self.log("train/tokens_per_s", self._tokens_seen / elapsed)

    def validation_step(self, batch, batch_idx):
        terms, n = self.response_terms(batch, split="val")
        self.log("val/loss", terms["ce"], batch_size=int(n), sync_dist=True)
        self.log("val/kd", terms["kd"], batch_size=int(n), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/loss")
        if value is not None:
            self.update_best(float(value))

    # ------------------------------------------------------------------ test
    def test_step(self, batch, batch_idx):
        terms, n = self.response_terms(batch, split="test", use_kd=False)  # test/nll needs no teacher
        self.log("test/nll", terms["ce"], batch_size=int(n), sync_dist=True)

    def configure_optimizers(self):
        return optimizer_config(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)

    def checkpoint_meta(self) -> dict:
        return {"vocab_size": int(self.model.vocab_size)}
