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

A Hugging Face student (`student=smollm2_*`, an `HFCausalLM`) runs the same code: the data carries its
tokenizer (`data.datamodule.tokenizer`, a `divlab.data.hf_tokenizer.HFTokenizer` that adds `<bs>`), the
embedding grows to that vocabulary (`build_hf_student`), the backspace-aware sampler recomputes each step
without a KV cache (`seqmatch_sampler.sample_by_recompute`) and samples.txt comes from HF's `generate`.

The NLL (`lm_loss`, `action_mask`) is in divlab.objectives.lm; the evaluation methods in tasks/lm_eval.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric

from divlab.errors import ConfigError
from divlab.objectives.lm import IGNORE_INDEX, action_mask, lm_loss, lm_targets  # noqa: F401  (re-exported)
from divlab.tasks.base import DivlabTask, optimizer_config
from divlab.tasks.classify import optimization
from divlab.tasks.lm_eval import LMEvaluation
from divlab.utils.signals import terminate_on_sigterm


def build_student(cfg: DictConfig, datamodule) -> nn.Module:
    """cfg.student.model with the data's vocabulary size; checks that the sequences fit the context.
    A Hugging Face student (divlab.models.hf, `_target_: ...build_hf_lm`) needs the data to carry its
    tokenizer (data.datamodule.tokenizer: an HFTokenizer); its embedding grows to that vocabulary (<bs>)."""
    from divlab.utils.checks import build as build_spec

    if not hasattr(datamodule, "vocab_size"):
        raise ConfigError(f"data={cfg.data.name} is not token data; choose data=arith or data=shakespeare")
    if ".hf." not in str(cfg.student.model.get("_target_", "")):
        model = build_spec(cfg.student.model, vocab_size=datamodule.vocab_size)
    else:
        model = build_hf_student(cfg.student.model, tokenizer=datamodule.tokenizer)
    if model.context_length < datamodule.max_len:
        raise ConfigError(
            f"student.model.context_length={model.context_length} is shorter than the data's "
            f"sequences ({datamodule.max_len} tokens); raise it"
        )
    return model


def build_hf_student(spec: DictConfig, *, tokenizer) -> nn.Module:
    """An HFCausalLM whose embedding and LM head are resized to the data tokenizer's vocabulary (the added
    <bs>, and <pad> where the tokenizer's pad is its eos); the tokenizer must be the model's own."""
    from divlab.utils.checks import build as build_spec

    if getattr(tokenizer, "kind", None) != "hf":
        raise ConfigError(
            "a Hugging Face student needs its tokenizer in the data: set data.datamodule.tokenizer "
            "as conf/experiment/lm/arith_smollm2.yaml does"
        )
    model = build_spec(spec)
    if model.vocab_size < tokenizer.n_content or model.eos_id != tokenizer.eos_id:
        raise ConfigError(
            f"student.model ({model.description}) has {model.vocab_size} output rows and eos id "
            f"{model.eos_id} but data.datamodule.tokenizer has {tokenizer.n_content} tokens and eos "
            f"id {tokenizer.eos_id}; build the tokenizer from the same model spec (${{student.model}})"
        )
    model.grow_vocab(tokenizer.vocab_size)
    return model


def eval_settings(cfg: DictConfig) -> dict:
    lm = cfg.get("lm") or {}
    return {
        "temperature": float(lm.get("temperature", 1.0)),
        "top_k": lm.get("top_k"),
        "n_samples": int(lm.get("n_samples", 4)),
        "sample_tokens": int(lm.get("sample_tokens", 200)),
    }


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
        raise ConfigError(
            f"lm.text_prompt_tokens + lm.text_new_tokens = {prompt + new} is longer than the data's "
            f"windows ({datamodule.max_len} tokens); lower them or raise data.datamodule.block_size"
        )
    judge = build_judge(cfg, datamodule)
    if judge is not None and judge.context_length < prompt + new:
        raise ConfigError(
            f"judge.model.context_length={judge.context_length} is shorter than "
            f"lm.text_prompt_tokens + lm.text_new_tokens = {prompt + new}; raise it"
        )
    clusters = int(cfg.judge.get("mauve_clusters", 16)) if judge is not None else 16
    return {
        "text_data": True,
        "text_prompt_tokens": prompt,
        "text_new_tokens": new,
        "text_windows": windows,
        "judge": judge,
        "mauve_clusters": clusters,
    }


def build(cfg: DictConfig, *, datamodule=None) -> LMTask:
    """task.builder of task=lm: the student GPT trained by maximum likelihood."""
    model = build_student(cfg, datamodule)
    return LMTask(
        model=model,
        tokenizer=datamodule.tokenizer,
        run_dir=cfg.get("run_dir"),
        **eval_settings(cfg),
        **text_eval_settings(cfg, datamodule),
        **optimization(cfg),
    )


def build_teacher_task(cfg: DictConfig, recipe: DictConfig):
    """teacher.train.builder of GPTs trained by maximum likelihood (the text judge, SequenceMatch's start):
    (network to cache, LMTask that trains it, metadata)."""
    from hydra.utils import instantiate

    from divlab.tasks.classify import cosine_schedule
    from divlab.utils.checks import build as build_spec

    model = instantiate(cfg.teacher.model)
    task = LMTask(
        model=model,
        tokenizer=build_spec(cfg.data.datamodule).tokenizer,
        optimizer=instantiate(recipe.optimizer),
        scheduler=cosine_schedule(recipe),
        seed=recipe.seed,
        n_samples=0,
        text_windows=0,
        task_name="teacher",
    )
    return model, task, {"vocab_size": int(model.vocab_size)}


class LMTask(LMEvaluation, DivlabTask):
    def __init__(
        self,
        *,
        model: nn.Module,  # a divlab GPT, or an HFCausalLM (divlab.models.hf)
        tokenizer,  # the data's tokenizer (specials <pad> <bos> <eos> <bs>)
        optimizer: Callable,  # partial: params -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler (stepped per epoch)
        seed: int = 0,  # reseeds torch at every epoch start
        temperature: float = 1.0,  # sampling temperature of samples.txt (0 = greedy)
        top_k: int | None = None,  # top-k of samples.txt
        n_samples: int = 4,  # samples written after fitting
        sample_tokens: int = 200,  # tokens per sample
        run_dir: str | None = None,  # samples.txt goes here (rank 0); None: not written
        text_data: bool = False,  # text windows: the test samples and scores continuations
        text_prompt_tokens: int = 32,  # text test: prompt = the first tokens of a test window
        text_new_tokens: int = 64,  # text test: tokens sampled after it (the real ones are the reference)
        text_windows: int = 128,  # text test: windows continued (0: no text metrics)
        judge=None,  # divlab.metrics.judge.Judge (judge_ppl, mauve); outside the module tree
        mauve_clusters: int = 16,  # k-means clusters of the MAUVE-style score
        task_name: str = "lm",
    ):  # recorded in checkpoints
        super().__init__(seed=seed, task_name=task_name)
        if text_prompt_tokens < 1 or text_new_tokens < 4 or text_windows < 0:
            raise ConfigError(
                "lm.text_prompt_tokens must be >= 1, lm.text_new_tokens >= 4 and lm.text_windows >= 0"
            )
        if (
            text_data
            and text_windows
            and model.context_length < text_prompt_tokens + text_new_tokens * 5 // 4
        ):
            raise ConfigError(
                f"student.model.context_length={model.context_length} is shorter than a text-test "
                f"sample ({text_prompt_tokens + text_new_tokens * 5 // 4} tokens); lower lm.text_* or raise it"
            )
        self.text_data, self.text_prompt_tokens = text_data, text_prompt_tokens
        self.text_new_tokens, self.text_windows, self.mauve_clusters = (
            text_new_tokens,
            text_windows,
            mauve_clusters,
        )
        self.hold_frozen("judge", judge)  # outside the module tree: never trained or saved
        self._text = None  # the test epoch's prompts, generated and real continuations
        if temperature < 0:
            raise ConfigError(f"lm.temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"lm.top_k must be >= 1 or null, got {top_k}")
        self.model, self.tokenizer = model, tokenizer
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.run_dir = run_dir
        self.temperature, self.top_k, self.n_samples, self.sample_tokens = (
            temperature,
            top_k,
            n_samples,
            sample_tokens,
        )
        self.eval_means = nn.ModuleDict()

    # ------------------------------------------------------------------ bookkeeping
    def track(self, name: str, value: Tensor, n: int | Tensor, *, train: bool = True) -> None:
        """Accumulate a weighted mean; all-reduced and logged at epoch end (training terms: DivlabTask.track)."""
        if train:
            super().track(name, value, n)
            return
        key = name.replace("/", "__")
        if key not in self.eval_means:
            self.eval_means[key] = MeanMetric().to(self.device)
        self.eval_means[key].update(value.detach().float(), weight=n)

    def flush(self, *, train: bool = False) -> dict[str, float]:
        """The evaluation means ({name: value}), reset; `train=True` gives the training terms'."""
        if train:
            return {k: v.item() for k, v in self.train_term_means().items()}
        out = {}
        for key, mean in self.eval_means.items():
            if mean.update_count > 0:
                out[key.replace("__", "/")] = mean.compute().item()
            mean.reset()
        return out

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
            self.judge.get()  # a judge not cached yet is trained now, once (divlab.metrics.judge)

    def on_test_epoch_start(self) -> None:
        self._text = {"prompts": [], "generated": [], "real": []}
        if self.judge is not None:
            self.judge.get().to(self.device).eval()

    def on_test_epoch_end(self) -> None:
        with terminate_on_sigterm():  # generation reads no Lightning flag: SIGTERM must end it
            self.text_metrics()
        self._log_eval()

    @property
    def judge(self):
        return self.frozen("judge")

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self):
        return optimizer_config(self.model.parameters(), self.optimizer_factory, self.scheduler_factory)

    def checkpoint_meta(self) -> dict:
        return {"vocab_size": int(self.model.vocab_size), "tokenizer": self.tokenizer.state_dict()}
