"""Language modelling with maximum likelihood (`task=lm`): a GPT on arithmetic or text windows.

    loss = - (1/N) sum_t log p(x_{t+1} | x_{<=t})   over the target positions (the actions)

Batches use the layout of `divlab.data.arithmetic` / `divlab.data.text_lm`: tokens (B, L),
prompt_len (B,), length (B,); the actions are tokens[prompt_len:length], so the target positions
are t = prompt_len - 1 .. length - 2. Metrics: val/loss, val/ppl (= exp of the token-weighted
mean loss) and the same under test/. On arithmetic data (batches with `ood_tokens`) the test also
decodes greedily with the backspace-aware sampler and logs exact-match accuracy on clean prompts
(test/acc_clean), on OOD prefixes (test/acc_ood: a correct answer prefix with one wrong digit,
which only a `<bs>` can remove) and the fraction of actions that were `<bs>` (test/bs_rate,
test/bs_rate_ood); the validation epoch logs val/acc_clean. On text (data whose datamodule has
kind "text"), the test also continues the first `lm.text_prompt_tokens` tokens of the first
`lm.text_windows` test windows by `lm.text_new_tokens` tokens (lm.temperature, lm.top_k; the
backspace-aware sampler, so a `<bs>` deletes and test/bs_rate counts them) and, at the end of the
test epoch, logs test/distinct_2, test/distinct_3 and test/repetition_4 of the continuations (and of
the real next tokens, *_real); with a judge (`cfg.judge`, divlab.metrics.judge) also test/judge_ppl
(judge_ppl_real for the real continuations) and test/mauve (MAUVE-style score between the judge's
features of real and generated continuations; `divlab.metrics.text`). After fitting, a few samples
(temperature / top-k, `GPT.generate`) are written to <run_dir>/samples.txt.

`lm_loss` and `action_mask` are shared with other LM tasks (data mixing imports them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric

from divlab.errors import ConfigError
from divlab.tasks.classify import optimization, optimizer_config
from divlab.tasks.seqmatch_sampler import sample_with_backspace

CHECKPOINT_FORMAT = 1
IGNORE_INDEX = -100


def lm_loss(logits: Tensor, targets: Tensor, *, ignore_index: int = IGNORE_INDEX,
            reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy of logits (..., V) against targets (...); `ignore_index` targets count 0.

    reduction "mean" (over the counted targets), "sum" or "none" (per token, same shape as targets).
    """
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=ignore_index, reduction="none").view(targets.shape)
    if reduction == "none":
        return flat
    if reduction == "sum":
        return flat.sum()
    return flat.sum() / (targets != ignore_index).sum().clamp(min=1)


def action_mask(shape: tuple[int, int], *, prompt_len: Tensor, length: Tensor) -> Tensor:
    """(B, L-1) bool: transition t -> t+1 is an action (prompt_len - 1 <= t < length - 1)."""
    t = torch.arange(shape[1] - 1, device=length.device)[None]
    return (t >= prompt_len[:, None] - 1) & (t < length[:, None] - 1)


def lm_targets(tokens: Tensor, mask: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, L-1) next tokens where `mask` holds, `ignore_index` elsewhere."""
    return tokens[:, 1:].masked_fill(~mask, ignore_index)


def build_student(cfg: DictConfig, datamodule) -> nn.Module:
    """cfg.student.model with the data's vocabulary size; checks that the sequences fit the context."""
    from divlab.utils.checks import build as build_spec

    if not hasattr(datamodule, "vocab_size"):
        raise ConfigError(f"data={cfg.data.name} is not token data; choose data=arith or data=shakespeare")
    model = build_spec(cfg.student.model, vocab_size=datamodule.vocab_size)
    if model.context_length < datamodule.max_len:
        raise ConfigError(f"student.model.context_length={model.context_length} is shorter than the data's "
                          f"sequences ({datamodule.max_len} tokens); raise it")
    return model


def eval_settings(cfg: DictConfig) -> dict:
    lm = cfg.get("lm") or {}
    return {"temperature": float(lm.get("temperature", 1.0)), "top_k": lm.get("top_k"),
            "n_samples": int(lm.get("n_samples", 4)), "sample_tokens": int(lm.get("sample_tokens", 200))}


def text_eval_settings(cfg: DictConfig, datamodule) -> dict:
    """The text test's settings and the judge (cfg.judge, or None); {} on data that is not text (a judge
    configured there raises). Unset lm.text_* default to 128 windows, prompts of min(32, window / 4)
    tokens and continuations of min(64, the rest of the window)."""
    from divlab.metrics.judge import build_judge

    if getattr(datamodule, "kind", None) != "text":
        build_judge(cfg, datamodule)
        return {}
    lm = cfg.get("lm") or {}
    prompt = int(lm.get("text_prompt_tokens") or min(32, max(1, datamodule.max_len // 4)))
    new = int(lm.get("text_new_tokens") or min(64, datamodule.max_len - prompt))
    windows = int(lm.get("text_windows", 128))
    if prompt + new > datamodule.max_len:
        raise ConfigError(f"lm.text_prompt_tokens + lm.text_new_tokens = {prompt + new} is longer than the data's "
                          f"windows ({datamodule.max_len} tokens); lower them or raise data.datamodule.block_size")
    judge = build_judge(cfg, datamodule)
    if judge is not None and judge.context_length < prompt + new:
        raise ConfigError(f"judge.model.context_length={judge.context_length} is shorter than "
                          f"lm.text_prompt_tokens + lm.text_new_tokens = {prompt + new}; raise it")
    clusters = int(cfg.judge.get("mauve_clusters", 16)) if judge is not None else 16
    return {"text_data": True, "text_prompt_tokens": prompt, "text_new_tokens": new, "text_windows": windows,
            "judge": judge, "mauve_clusters": clusters}


def build(cfg: DictConfig, *, datamodule=None) -> LMTask:
    """task.builder of task=lm: the student GPT trained by maximum likelihood."""
    model = build_student(cfg, datamodule)
    return LMTask(model=model, tokenizer=datamodule.tokenizer, run_dir=cfg.get("run_dir"), **eval_settings(cfg),
                  **text_eval_settings(cfg, datamodule), **optimization(cfg))


class LMTask(pl.LightningModule):
    def __init__(self, *,
                 model: nn.Module,                   # a divlab GPT
                 tokenizer,                          # the data's tokenizer (specials <pad> <bos> <eos> <bs>)
                 optimizer: Callable,                # partial: params -> torch.optim.Optimizer
                 scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (stepped per epoch)
                 seed: int = 0,                      # reseeds torch at every epoch start
                 temperature: float = 1.0,           # sampling temperature of samples.txt (0 = greedy)
                 top_k: int | None = None,           # top-k of samples.txt
                 n_samples: int = 4,                 # samples written after fitting
                 sample_tokens: int = 200,           # tokens per sample
                 run_dir: str | None = None,         # samples.txt goes here (rank 0); None: not written
                 text_data: bool = False,            # text windows: the test samples and scores continuations
                 text_prompt_tokens: int = 32,       # text test: prompt = the first tokens of a test window
                 text_new_tokens: int = 64,          # text test: tokens sampled after it (the real ones are the reference)
                 text_windows: int = 128,            # text test: windows continued (0: no text metrics)
                 judge=None,                         # divlab.metrics.judge.Judge (judge_ppl, mauve); outside the module tree
                 mauve_clusters: int = 16,           # k-means clusters of the MAUVE-style score
                 task_name: str = "lm"):             # recorded in checkpoints
        super().__init__()
        if text_prompt_tokens < 1 or text_new_tokens < 4 or text_windows < 0:
            raise ConfigError("lm.text_prompt_tokens must be >= 1, lm.text_new_tokens >= 4 and lm.text_windows >= 0")
        if text_data and text_windows and model.context_length < text_prompt_tokens + text_new_tokens * 5 // 4:
            raise ConfigError(f"student.model.context_length={model.context_length} is shorter than a text-test "
                              f"sample ({text_prompt_tokens + text_new_tokens * 5 // 4} tokens); lower lm.text_* or raise it")
        self.text_data, self.text_prompt_tokens = text_data, text_prompt_tokens
        self.text_new_tokens, self.text_windows, self.mauve_clusters = text_new_tokens, text_windows, mauve_clusters
        self._judge = (judge,)             # a tuple hides it from nn.Module registration: never trained or saved
        self._text = None                  # the test epoch's prompts, generated and real continuations
        if temperature < 0:
            raise ConfigError(f"lm.temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"lm.top_k must be >= 1 or null, got {top_k}")
        self.model, self.tokenizer = model, tokenizer
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.seed, self.task_name, self.run_dir = seed, task_name, run_dir
        self.temperature, self.top_k, self.n_samples, self.sample_tokens = temperature, top_k, n_samples, sample_tokens
        self.train_means = nn.ModuleDict()
        self.eval_means = nn.ModuleDict()

    # ------------------------------------------------------------------ bookkeeping
    def track(self, name: str, value: Tensor, n: int | Tensor, *, train: bool = True) -> None:
        """Accumulate a weighted mean; all-reduced and logged at epoch end."""
        store = self.train_means if train else self.eval_means
        key = name.replace("/", "__")
        if key not in store:
            store[key] = MeanMetric().to(self.device)
        store[key].update(value.detach().float(), weight=n)

    def flush(self, *, train: bool) -> dict[str, float]:
        store = self.train_means if train else self.eval_means
        out = {}
        for key, mean in store.items():
            if mean.update_count > 0:
                out[key.replace("__", "/")] = mean.compute().item()
            mean.reset()
        return out

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(self.seed * 1_000_003 + self.current_epoch * 1_009 + self.global_rank)

    def on_train_epoch_end(self) -> None:
        for name, value in self.flush(train=True).items():
            self.log(f"train/{name}", value)

    # ------------------------------------------------------------------ training
    def nll(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Mean next-token NLL over the actions of a batch and the number of target tokens."""
        tokens = batch["tokens"]
        mask = action_mask(tokens.shape, prompt_len=batch["prompt_len"], length=batch["length"])
        logits = self.model(tokens[:, :-1])
        targets = lm_targets(tokens, mask)
        return lm_loss(logits, targets), mask.sum()

    def training_step(self, batch, batch_idx):
        loss, n = self.nll(batch)
        self.track("loss", loss, n)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict, stage: str) -> None:
        loss, n = self.nll(batch)
        self.track(f"{stage}/loss", loss, n, train=False)
        if "ood_tokens" in batch:
            self.arithmetic_accuracy(batch, stage)
        elif stage == "test" and self.text_data and self.text_windows > 0:
            self.collect_text(batch)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _log_eval(self) -> None:
        values = self.flush(train=False)
        for name, value in values.items():
            self.log(name, value)
            if name.endswith("/loss"):
                self.log(name.replace("/loss", "/ppl"), math.exp(min(value, 50.0)))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.flush(train=False)
            return
        self._log_eval()

    def setup(self, stage: str) -> None:
        if stage == "test" and self.judge is not None:
            self.judge.get()      # a judge not cached yet is trained now, once (divlab.metrics.judge)

    def on_test_epoch_start(self) -> None:
        self._text = {"prompts": [], "generated": [], "real": []}
        if self.judge is not None:
            self.judge.get().to(self.device).eval()

    def on_test_epoch_end(self) -> None:
        self.text_metrics()
        self._log_eval()

    @property
    def judge(self):
        return self._judge[0]

    @torch.no_grad()
    def arithmetic_accuracy(self, batch: dict, stage: str) -> None:
        """Greedy exact match from clean prompts and (test only) from OOD prefixes; <bs> rates."""
        tok = self.tokenizer
        answers = [self.answer_ids(row, p, n) for row, p, n in
                   zip(batch["tokens"].tolist(), batch["prompt_len"].tolist(), batch["length"].tolist())]
        max_answer = max(len(a) for a in answers)
        runs = [("clean", batch["tokens"], batch["prompt_len"])]
        if stage == "test":
            runs.append(("ood", batch["ood_tokens"], batch["ood_len"]))
        was_training = self.model.training
        self.model.eval()
        for kind, inputs, input_len in runs:
            width = int(input_len.max())
            rollout = sample_with_backspace(
                self.model, inputs[:, :width], input_len=input_len, prompt_len=batch["prompt_len"],
                max_steps=2 * (max_answer + 1) + 2, bs_id=tok.bs_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                never=(tok.pad_id, tok.bos_id), temperature=0.0)
            correct = torch.tensor([float(ended and state == answer) for ended, state, answer in
                                    zip(rollout.ended.tolist(), rollout.states, answers)], device=self.device)
            self.track(f"{stage}/acc_{kind}", correct.mean(), len(correct), train=False)
            suffix = "" if kind == "clean" else "_ood"
            self.track(f"{stage}/bs_rate{suffix}", rollout.n_backspace.sum() / rollout.n_actions.sum().clamp(min=1),
                       rollout.n_actions.sum(), train=False)
        self.model.train(was_training)

    @torch.no_grad()
    def collect_text(self, batch: dict) -> None:
        """Continue the first text_prompt_tokens tokens of the batch's windows (up to text_windows per test
        epoch) with the backspace-aware sampler; keep prompts, continuations (backspaces applied, at most
        text_new_tokens) and the real next tokens for `text_metrics`."""
        store, tok = self._text, self.tokenizer
        tokens = batch["tokens"][: self.text_windows - len(store["prompts"])]
        if len(tokens) == 0:
            return
        p, n = self.text_prompt_tokens, self.text_new_tokens
        prompts, width = tokens[:, :p], torch.full((len(tokens),), p, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + len(store["prompts"]))
        was_training = self.model.training
        self.model.eval()
        rollout = sample_with_backspace(        # a few spare actions, so rows with <bs> still reach n tokens
            self.model, prompts, input_len=width, prompt_len=width, max_steps=n * 5 // 4, bs_id=tok.bs_id,
            eos_id=tok.eos_id, pad_id=tok.pad_id, never=(tok.pad_id, tok.bos_id, tok.eos_id),
            temperature=self.temperature, top_k=self.top_k, generator=generator)
        self.model.train(was_training)
        store["prompts"] += prompts.tolist()
        store["generated"] += [state[:n] for state in rollout.states]
        store["real"] += tokens[:, p : p + n].tolist()
        actions = rollout.n_actions.sum()
        self.track("test/bs_rate", rollout.n_backspace.sum() / actions.clamp(min=1), actions, train=False)

    def text_metrics(self) -> None:
        """distinct-n, repetition and (with a judge) judge perplexity and MAUVE-style score of the test
        epoch's continuations (divlab.metrics.judge.text_report), logged as test/*."""
        from divlab.metrics.judge import text_report

        store = self._text
        if not store or not store["prompts"]:
            return
        judge = self.judge.get() if self.judge is not None else None
        report = text_report(store["prompts"], store["generated"], store["real"], judge=judge,
                             pad_id=self.tokenizer.pad_id, mauve_clusters=self.mauve_clusters, seed=self.seed)
        for name, value in report.items():
            self.track(f"test/{name}", torch.tensor(value), len(store["prompts"]), train=False)
        self._text = None

    def answer_ids(self, row: list[int], prompt_len: int, length: int) -> list[int]:
        """The answer's content ids of a clean data row (no <eos>)."""
        return [t for t in row[prompt_len:length] if t != self.tokenizer.eos_id]

    # ------------------------------------------------------------------ samples
    def on_fit_end(self) -> None:
        if self.global_rank != 0 or self.n_samples < 1 or not self.run_dir:
            return
        dataset = self.trainer.datamodule.dataset("val")
        items = [dataset[i] for i in range(min(self.n_samples, len(dataset)))]
        # arithmetic: the prompts; text: the first half (at most 16 tokens) of a window
        prompt_len = min(int(it["prompt_len"]) for it in items)
        if prompt_len <= 1:
            prompt_len = max(1, min(16, min(int(it["length"]) for it in items) // 2))
        prompts = torch.stack([it["tokens"][:prompt_len] for it in items]).to(self.device)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(prompts, max_new_tokens=self.sample_tokens, temperature=self.temperature,
                                  top_k=self.top_k, eos_id=self.tokenizer.eos_id,
                                  generator=torch.Generator(device=self.device).manual_seed(self.seed))
        self.model.train(was_training)
        lines = [f"temperature={self.temperature} top_k={self.top_k}\n"]
        for i, (p, o) in enumerate(zip(prompts.tolist(), out.tolist())):
            lines.append(f"--- sample {i}, prompt {self.tokenizer.decode(p)!r}\n"
                         f"{self.tokenizer.decode(o, apply_backspace=True)}\n")
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.run_dir) / "samples.txt").write_text("".join(lines))

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self):
        return optimizer_config(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["divlab"] = {"format": CHECKPOINT_FORMAT, "kind": "lightning", "task": self.task_name,
                                "vocab_size": int(self.model.vocab_size),
                                "tokenizer": self.tokenizer.state_dict()}
