"""task=code_eval: pass@1 of a causal LM on code problems under a decoding rule (no training).

    divlab task=code_eval decode=uscd                       # SmolLM2-135M-Instruct on the offline few-shot task
    divlab task=code_eval data=humaneval data.datamodule.limit=20 decode=greedy

Each test batch is a list of problems (divlab.data.code_tasks: prompt, lame_prompt, test, entry_point). The
standard and the lame prompts are tokenized, left-padded and decoded side by side by divlab.decoding.generate
with the `decode` group's rule (greedy | contrastive | uscd, USCD of Wang et al. 2024: see
divlab/decoding/uscd.py for its equations); the completion is cut where the function body ends
(code_tasks.stop_completion) and prompt + completion + test + `check(entry_point)` runs in the sandboxed
executor (divlab.metrics.code_exec). One greedy completion per problem, so pass@1 is the fraction passed.

Logged at test time: test/pass_at_1, test/applied_fraction (steps where the contrast chose the token, over
all decoded steps of all problems), test/n_problems, and test/n_<status> for failed, timeout and error.
The completions, their status and detail go to <run dir>/completions.jsonl.

Models: an HFCausalLM (student=smollm2_135m, or a local HF directory) with its own tokenizer, or a divlab GPT
(student=gpt_tiny) on UTF-8 bytes (divlab.data.tokenizers.ByteTokenizer, vocabulary 260), untrained unless
student.model points elsewhere: a plumbing check, not a code model.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor, nn

from divlab.data.code_tasks import stop_completion
from divlab.data.instruct import left_padded_batches
from divlab.data.tokenizers import ByteTokenizer
from divlab.decoding import MODES, generate
from divlab.errors import ConfigError
from divlab.metrics.code_exec import STATUSES, run_check
from divlab.tasks.base import DivlabTask

__all__ = ["CodeEvalTask", "build"]


class _Codec:
    """text <-> ids for the model: the HF model's tokenizer, or UTF-8 bytes for a divlab GPT."""

    def __init__(self, model: nn.Module):
        self.hf = getattr(model, "tokenizer", None) if hasattr(model, "hf") else None
        self.bytes = None if self.hf is not None else ByteTokenizer()
        self.eos_id = None if self.hf is not None else self.bytes.eos_id

    def encode(self, text: str) -> list[int]:
        if self.hf is not None:
            return list(self.hf(text, add_special_tokens=False)["input_ids"])
        return self.bytes.encode(text)

    def decode(self, ids: list[int]) -> str:
        if self.hf is not None:
            return self.hf.decode(ids, skip_special_tokens=True)
        return self.bytes.decode(ids)


def check_decode(decode: DictConfig) -> dict:
    """The decode group as keywords of divlab.decoding.generate (mode -> decode); one sentence when wrong."""
    if decode is None:
        raise ConfigError(
            "task=code_eval needs a decode group: decode=greedy, decode=contrastive or decode=uscd"
        )
    mode = decode.get("mode")
    if mode not in MODES:
        raise ConfigError(f"decode.mode must be one of {', '.join(MODES)}, got {mode!r}")
    n = decode.get("max_new_tokens")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"decode.max_new_tokens must be an integer >= 1, got {n!r}")
    return {
        "decode": mode,
        "threshold": decode.get("threshold"),
        "weight": decode.get("weight"),
        "divergence": decode.get("divergence") or "js",
        "plausibility": float(decode.get("plausibility") or 0.0),
        "max_new_tokens": n,
    }


def build(cfg: DictConfig, *, datamodule=None) -> CodeEvalTask:
    """task.builder of task=code_eval."""
    from divlab.decoding.uscd import check_plausibility, check_threshold, check_weight
    from divlab.utils.checks import build as build_spec

    decode = check_decode(cfg.get("decode"))
    if decode["decode"] != "greedy":  # the settings fail here, before the model is built
        check_weight(decode["weight"])
        check_plausibility(decode["plausibility"])
    if decode["decode"] == "uscd":
        check_threshold(decode["threshold"])
    timeout = cfg.code_eval.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"code_eval.timeout must be a number of seconds > 0, got {timeout!r}")
    if datamodule is None or not hasattr(datamodule, "problems"):
        raise ConfigError(
            f"task=code_eval needs code problems; choose data=fewshot_code or data=humaneval, got data={cfg.data.name}"
        )
    spec = cfg.student.model
    if ".hf." in str(spec.get("_target_", "")) or "pretrained" in str(spec.get("_target_", "")):
        model = build_spec(spec)
    else:
        model = build_spec(spec, vocab_size=ByteTokenizer().vocab_size)
    return CodeEvalTask(model=model, timeout=float(timeout), seed=int(cfg.seed), **decode)


class CodeEvalTask(DivlabTask):
    def __init__(
        self,
        *,
        model: nn.Module,  # an HFCausalLM or a divlab GPT; never trained here
        decode: str = "greedy",  # greedy | contrastive | uscd
        threshold: float | None = None,  # uscd: contrast where D(standard || lame) >= threshold
        weight: float | None = None,  # contrastive, uscd: log P_standard - weight * log P_lame
        divergence: str = "js",  # uscd: the uncertainty divergence (P = standard)
        plausibility: float = 0.0,  # contrastive, uscd: Li et al.'s alpha; 0 = every token
        max_new_tokens: int = 64,  # tokens decoded per problem
        timeout: float = 5.0,  # seconds one program may run
        seed: int = 0,  # unused by greedy decoding; kept for the run directory
    ):
        super().__init__(seed=seed, task_name="code_eval", best_metric=None)
        self.model, self.codec = model.eval().requires_grad_(False), _Codec(model)
        self.decode_kwargs = dict(
            decode=decode,
            threshold=threshold,
            weight=weight,
            divergence=divergence,
            plausibility=plausibility,
            max_new_tokens=max_new_tokens,
        )
        self.timeout = timeout
        self.records: list[dict] = []
        self.steps = [0, 0]  # applied, live decoded steps over the test epoch

    def configure_optimizers(self):
        return None

    def _batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        rows = [self.codec.encode(t) for t in texts]
        limit = getattr(self.model, "context_length", 0)
        longest = max(len(r) for r in rows) + self.decode_kwargs["max_new_tokens"]
        if limit and longest > limit:
            raise ConfigError(
                f"a prompt plus decode.max_new_tokens needs {longest} positions but the model has "
                f"{limit} (student.model.context_length); raise it or lower decode.max_new_tokens"
            )
        pad = getattr(self.model, "pad_id", None)
        batch = next(left_padded_batches(rows, batch_size=len(rows), pad_id=0 if pad is None else pad))
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def on_test_epoch_start(self) -> None:
        self.records, self.steps = [], [0, 0]

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        standard, standard_mask = self._batch([p["prompt"] for p in batch])
        lame = lame_mask = None
        if self.decode_kwargs["decode"] != "greedy":
            lame, lame_mask = self._batch([p["lame_prompt"] for p in batch])
        out = generate(
            self.model,
            standard,
            lame_ids=lame,
            standard_mask=standard_mask,
            lame_mask=lame_mask,
            eos_id=self.codec.eos_id,
            **self.decode_kwargs,
        )
        counts = dict.fromkeys(STATUSES, 0)
        for p, ids, live, applied in zip(batch, out.ids, out.live, out.applied):
            text = self.codec.decode(ids[live].tolist())
            completion = stop_completion(text, continues_line=not p["prompt"].endswith("\n"))
            result = run_check(p["prompt"], completion, p["test"], p["entry_point"], timeout=self.timeout)
            counts[result.status] += 1
            self.records.append(
                {
                    "task_id": p["task_id"],
                    "status": result.status,
                    "detail": result.detail,
                    "completion": completion,
                    "applied_steps": int(applied.sum()),
                    "steps": int(live.sum()),
                }
            )
        self.steps[0] += int(out.applied.sum())
        self.steps[1] += int(out.live.sum())
        n = len(batch)
        self.log("test/pass_at_1", counts["passed"] / n, batch_size=n)
        self.log("test/n_problems", float(n), reduce_fx="sum", batch_size=n)
        for status in STATUSES[1:]:
            self.log(f"test/n_{status}", float(counts[status]), reduce_fx="sum", batch_size=n)

    def on_test_epoch_end(self) -> None:
        self.log("test/applied_fraction", self.steps[0] / max(self.steps[1], 1))
        root = getattr(self.trainer, "default_root_dir", None) if self._trainer is not None else None
        if root and self.trainer.is_global_zero:
            path = Path(root) / "completions.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
