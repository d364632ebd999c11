"""The token-divergence worker of `make bench`: forward + backward of D(teacher || student) over N tokens at
vocabulary V, by one method, in a fresh process (so its peak memory is its own), reported as JSON."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from bench_sections.common import BENCH_SCRIPT, ROOT

METHODS = {
    "plain": "full log_softmax + F.kl_div(log_target=True, batchmean) on materialised logits",
    "chunked": "chunked_divergence (materialised logits, chunked divergence + gradient buffer)",
    "fused": "fused_linear_divergence (hidden states + output weights, no N x V tensor)",
}
OBJECTIVE = "TokenDistillLoss of task=lm_distill (fused forward KL in its own chunks, the NLL logged)"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    """This process's peak resident memory. /proc's VmHWM belongs to this address space; getrusage's
    ru_maxrss survives exec, so in a worker started by a big parent it would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def token_worker(method: str, vocab: int, tokens: int, hidden: int, repeats: int, device: str) -> dict:
    """One configuration, forward + backward of D(teacher || student) over `tokens` tokens."""
    import torch
    import torch.nn.functional as F

    from divlab.divergences import chunked_divergence, fused_linear_divergence

    torch.manual_seed(0)
    dev = torch.device(device)
    scale = hidden**-0.5
    h_s = torch.randn(tokens, hidden, device=dev)
    w_s = (torch.randn(vocab, hidden, device=dev) * scale).requires_grad_(True)
    h_t = torch.randn(tokens, hidden, device=dev)
    w_t = torch.randn(vocab, hidden, device=dev) * scale
    h_s.requires_grad_(True)
    labels = torch.randint(vocab, (tokens,), device=dev)
    if method == "objective":
        from divlab.divergences import get_divergence
        from divlab.objectives.lm_distill import TokenDistillLoss

        objective = TokenDistillLoss(divergence=get_divergence("forward_kl"), ce_weight=0.0, kd_weight=1.0)

    def step():
        if method == "plain":
            s = h_s @ w_s.t()
            with torch.no_grad():
                t = F.log_softmax(h_t @ w_t.t(), dim=-1)
            loss = F.kl_div(F.log_softmax(s, dim=-1), t, reduction="batchmean", log_target=True)
        elif method == "chunked":
            s = h_s @ w_s.t()
            with torch.no_grad():
                t = h_t @ w_t.t()
            loss = chunked_divergence(t, s, "forward_kl", reduction="mean")
        elif method == "objective":
            loss = objective(
                student_hidden=h_s, student_weight=w_s, targets=labels, teacher_hidden=h_t, teacher_weight=w_t
            )["loss"]
        else:
            loss = fused_linear_divergence(h_s, w_s, teacher_hidden=h_t, teacher_weight=w_t, reduction="mean")
        loss.backward()
        return float(loss.detach())

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times, value, peak = [], None, None
    for i in range(repeats):
        h_s.grad = None
        w_s.grad = None
        sync()
        if i == 0:  # memory from the first run (it allocates the parameter gradients too)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            else:
                base, before = _rss_bytes(), _maxrss_bytes()
        start = time.perf_counter()
        value = step()
        sync()
        times.append(time.perf_counter() - start)
        if i == 0:
            if dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated() - base
            else:
                after = _maxrss_bytes()
                peak = max(after - base, 0) if after > before else None  # None: below an earlier peak
    return {
        "method": method,
        "vocab": vocab,
        "tokens": tokens,
        "hidden": hidden,
        "value": value,
        "times_s": times,
        "time_s": min(times[1:]) if len(times) > 1 else times[0],
        "peak_bytes": peak,
        "grad_w_norm": float(w_s.grad.norm()),
    }


def run_token_config(method, vocab, tokens, hidden, repeats, device) -> dict:
    if device != "cpu":
        return token_worker(method, vocab, tokens, hidden, repeats, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", PYTHONPATH=str(ROOT / "src"))
    cmd = [
        sys.executable,
        str(BENCH_SCRIPT),
        "--worker",
        "token",
        "--method",
        method,
        "--vocab",
        str(vocab),
        "--tokens",
        str(tokens),
        "--hidden",
        str(hidden),
        "--repeats",
        str(repeats),
        "--device",
        device,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {
            "method": method,
            "vocab": vocab,
            "tokens": tokens,
            "hidden": hidden,
            "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:],
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])
