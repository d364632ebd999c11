"""Test-time evaluation of task=lm_distill: greedy generation on the test prompts and the metrics on it.

`LMDistillEval` is a mixin of divlab.tasks.lm_distill.LMDistillTask (it reads the task's model, teacher,
eval_batch_size, max_new_tokens, shared_vocab, test_teacher_responses and run_dir). At the end of the test
epoch it logs test/rougeL (greedy responses vs the references, ROUGE-L F x 100), test/rougeL_teacher (vs
the teacher's cached greedy responses), test/teacher_nll (the teacher's NLL of the student's greedy
responses; only when a teacher is held: lm_distill.teacher_outputs=topk runs without one), test/exact_match
(arithmetic prompts, %) and test/nll_teacher_resp (the student's NLL of the teacher's responses), and
writes the prompts' student and teacher responses to <run_dir>/responses.jsonl (rank 0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from divlab.data.instruct import response_batch  # noqa: F401  (re-exported: tasks import it from here)
from divlab.objectives.lm import action_mask
from divlab.objectives.lm_distill import chunked_nll
from divlab.utils.signals import terminate_on_sigterm


def prompt_rows(batch: dict) -> list[list[int]]:
    """The prompt ids of each row of a left-padded prompt batch (input_ids, attention_mask)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def until_eos(ids: list[int], *, eos_id: int, pad_id: int) -> list[int]:
    """A generated row cut after its first eos (kept); pads dropped."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id) + 1]
    return [i for i in ids if i != pad_id or i == eos_id]


class LMDistillEval:
    """Greedy test generation and its metrics (mixed into LMDistillTask)."""

    @torch.no_grad()
    def nll_of(self, model: nn.Module, prompts: list[list[int]], responses: list[list[int]]) -> float:
        """Per-token NLL of responses (ids, eos included) after their prompts under `model`."""
        total, count = 0.0, 0
        for lo in range(0, len(prompts), self.eval_batch_size):
            b = response_batch(
                prompts[lo : lo + self.eval_batch_size],
                responses[lo : lo + self.eval_batch_size],
                pad_id=self.model.pad_id,
            )
            b = {k: v.to(self.device) for k, v in b.items()}
            mask = action_mask(b["tokens"].shape, prompt_len=b["prompt_len"], length=b["length"])
            attention = torch.arange(b["tokens"].shape[1], device=self.device)[None] < b["length"][:, None]
            hidden = model.hidden_states(b["tokens"], attention)[:, :-1][mask]
            n = int(mask.sum())
            total += float(chunked_nll(hidden, model.output_weight, b["tokens"][:, 1:][mask])) * n
            count += n
        return total / max(count, 1)

    def on_test_epoch_end(self) -> None:
        from divlab.metrics.generation import exact_match, rouge_l
        from divlab.provision.responses import decode_response

        dm = self.trainer.datamodule
        examples = dm.examples("test")
        prompts, generated = [None] * len(examples), [None] * len(examples)
        self.model.eval()
        with torch.no_grad(), terminate_on_sigterm():
            for batch in dm.prompt_batches("test", batch_size=self.eval_batch_size):
                new = self.model.generate(
                    batch["input_ids"].to(self.device),
                    batch["attention_mask"].to(self.device),
                    max_new_tokens=self.max_new_tokens,
                    temperature=0.0,
                )
                for i, p, row in zip(batch["index"].tolist(), prompt_rows(batch), new.tolist()):
                    prompts[i] = p
                    generated[i] = until_eos(row, eos_id=self.model.eos_id, pad_id=self.model.pad_id) or [
                        self.model.eos_id
                    ]
        tok, eos, pad = self.model.tokenizer, self.model.eos_id, self.model.pad_id
        texts = [decode_response(tok, g, eos_id=eos, pad_id=pad) for g in generated]
        references = [e["response"] for e in examples]
        metrics = {"test/rougeL": rouge_l(texts, references)}
        if self.shared_vocab and self.teacher is not None:  # the teacher scores the student's ids
            metrics["test/teacher_nll"] = self.nll_of(self.teacher, prompts, generated)
        em = exact_match(texts, [e.get("answer") for e in examples])
        if not math.isnan(em):
            metrics["test/exact_match"] = 100.0 * em
        teacher_texts = self.test_teacher_responses
        if teacher_texts is not None:
            metrics["test/rougeL_teacher"] = rouge_l(texts, teacher_texts)
            teacher_ids = [
                tok(t, add_special_tokens=False)["input_ids"][: self.max_new_tokens - 1] + [eos]
                for t in teacher_texts
            ]
            metrics["test/nll_teacher_resp"] = self.nll_of(self.model, prompts, teacher_ids)
        for key, value in metrics.items():
            self.log(key, float(value))
        if self.run_dir and self.global_rank == 0:
            rows = [
                {
                    "prompt": e["prompt"],
                    "reference": e["response"],
                    "student": s,
                    "teacher": teacher_texts[i] if teacher_texts else None,
                }
                for i, (e, s) in enumerate(zip(examples, texts))
            ]
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.run_dir) / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
