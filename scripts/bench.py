#!/usr/bin/env python
"""divlab benchmarks: speed and memory targets, one named section each.

    python scripts/bench.py                        # every section
    python scripts/bench.py --only divergences     # one section (repeatable)
    python scripts/bench.py --only divergences --quick   # small smoke sizes

Each section writes outputs/bench/<name>.json and outputs/bench/<name>.md (a Markdown table)
and prints the table. To add a section, write `def bench_x(args) -> (payload, markdown)` and
decorate it with `@section("x")`. No test asserts on these timings.

Peak memory: on CUDA, torch.cuda.max_memory_allocated() above the inputs; on CPU, each
configuration runs in a fresh subprocess and reports its peak resident set size (getrusage
ru_maxrss) minus the resident size once its inputs exist, with glibc's mmap threshold pinned
(MALLOC_MMAP_THRESHOLD_) so that large tensors are returned to the OS when freed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"
SECTIONS: dict = {}


def section(name: str):
    def wrap(fn):
        SECTIONS[name] = fn
        return fn

    return wrap


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return env


# ============================================================================= token divergence worker

METHODS = {
    "plain": "full log_softmax + F.kl_div(log_target=True, batchmean) on materialised logits",
    "chunked": "chunked_divergence (materialised logits, chunked divergence + gradient buffer)",
    "fused": "fused_linear_divergence (hidden states + output weights, no N x V tensor)",
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
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
        "method": method, "vocab": vocab, "tokens": tokens, "hidden": hidden, "value": value,
        "times_s": times, "time_s": min(times[1:]) if len(times) > 1 else times[0],
        "peak_bytes": peak, "grad_w_norm": float(w_s.grad.norm()),
    }


def run_token_config(method, vocab, tokens, hidden, repeats, device) -> dict:
    if device != "cpu":
        return token_worker(method, vocab, tokens, hidden, repeats, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, __file__, "--worker", "token", "--method", method, "--vocab", str(vocab),
           "--tokens", str(tokens), "--hidden", str(hidden), "--repeats", str(repeats), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"method": method, "vocab": vocab, "tokens": tokens, "hidden": hidden,
                "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ============================================================================= section: divergences


def _sinkhorn_bench(problems: int, size: int, epsilon: float, iterations: int, repeats: int) -> dict:
    import numpy as np
    import ot
    import torch

    from divlab.divergences import sinkhorn_cost

    g = torch.Generator().manual_seed(0)
    x = torch.rand(problems, size, 2, generator=g, dtype=torch.float64)
    y = torch.rand(problems, size, 2, generator=g, dtype=torch.float64)
    cost = torch.cdist(x, y) ** 2
    a = np.full(size, 1.0 / size)
    costs_np = [cost[i].numpy() for i in range(problems)]

    def pot():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "did not converge": stopThr=0 runs every iteration, as we do
            return np.array([ot.sinkhorn2(a, a, c, epsilon, numItermax=iterations, stopThr=0.0) for c in costs_np])

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    t_pot, ref = best(pot)
    result = {"problems": problems, "size": size, "epsilon": epsilon, "iterations": iterations,
              "cost": "squared Euclidean, points uniform in [0,1]^2", "pot_s": t_pot, "pot_version": ot.__version__,
              "pot_call": "ot.sinkhorn2(a, b, M, reg=epsilon, numItermax=iterations, stopThr=0) per problem (numpy float64)"}
    default_threads = torch.get_num_threads()
    # POT runs on one core for these sizes; the batched solver is timed on one thread (like for
    # like, and immune to oversubscription on a shared machine) and with torch's default threads
    runs = [("float32, 1", torch.float32, 1), ("float64, 1", torch.float64, 1)]
    if default_threads > 1:
        runs.append((f"float32, {default_threads} threads", torch.float32, default_threads))
    result["runs"] = {}
    for name, dtype, threads in runs:
        torch.set_num_threads(threads)
        try:
            c = cost.to(dtype)
            t, (vals, _) = best(lambda c=c: sinkhorn_cost(c, epsilon=epsilon, iterations=iterations))
        finally:
            torch.set_num_threads(default_threads)
        rel = float(np.max(np.abs(vals.double().numpy() - ref) / np.abs(ref)))
        result["runs"][name] = {"dtype": str(dtype), "threads": threads, "time_s": t, "speedup": t_pot / t,
                                "max_rel_diff": rel, "target_met": bool(t_pot / t >= 10 and rel <= 1e-5)}
    return result


@section("divergences")
def bench_divergences(args):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        vocabs, tokens, hidden, repeats = [2048, 8192], [128, 512], 64, 2
        sk = dict(problems=16, size=50, epsilon=0.05, iterations=50, repeats=2)
    else:
        vocabs, tokens, hidden, repeats = [32768, 131072], [1024, 4096], 1024, 2
        sk = dict(problems=64, size=100, epsilon=0.05, iterations=100, repeats=5)
    target_v, target_n = max(vocabs), max(tokens)

    rows = []
    for vocab in vocabs:
        for n in tokens:
            plain_estimate = 6 * 4 * vocab * n  # ~6 float32 N x V tensors at the plain path's peak
            avail = _mem_available_bytes()
            for method in METHODS:
                if device == "cpu" and method == "plain" and avail is not None and avail < 1.3 * plain_estimate:
                    rows.append({"method": method, "vocab": vocab, "tokens": n, "hidden": hidden,
                                 "error": [f"skipped: needs ~{plain_estimate / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"]})
                    continue
                reps = 1 if vocab * n >= 2**29 and not args.quick else repeats  # the largest: one (cold) run
                r = run_token_config(method, vocab, n, hidden, reps, device)
                rows.append(r)
                print(f"  token {method:8s} V={vocab:6d} N={n:5d}: "
                      + (f"{r['time_s']:.2f} s, peak {r['peak_bytes'] / 2**20 if r.get('peak_bytes') else float('nan'):.0f} MiB"
                         if "error" not in r else str(r["error"])), flush=True)

    def find(method, vocab, n):
        return next((r for r in rows if r["method"] == method and r["vocab"] == vocab and r["tokens"] == n), None)

    table = []
    for r in rows:
        base = find("plain", r["vocab"], r["tokens"])
        ok = "error" not in r and base is not None and "error" not in base
        t_ratio = r["time_s"] / base["time_s"] if ok else None
        m_ratio = r["peak_bytes"] / base["peak_bytes"] if ok and r.get("peak_bytes") and base.get("peak_bytes") else None
        r["time_ratio"], r["mem_ratio"] = t_ratio, m_ratio
        r["value_rel_diff"] = abs(r["value"] - base["value"]) / abs(base["value"]) if ok else None
        is_target = r["vocab"] == target_v and r["tokens"] == target_n and r["method"] != "plain"
        if is_target and m_ratio is not None:
            r["target_memory_met"] = m_ratio <= 0.2
            r["target_time_met"] = t_ratio <= 1.2
        verdict = ""
        if "target_memory_met" in r:
            verdict = (f"memory <= 0.2x: {'met' if r['target_memory_met'] else 'not met'}; "
                       f"time <= 1.2x: {'met' if r['target_time_met'] else 'not met'}")
        table.append([
            r["vocab"], r["tokens"], r["method"],
            f"{r['time_s']:.2f}" if "time_s" in r else "-",
            f"{t_ratio:.2f}x" if t_ratio is not None else "-",
            f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "-",
            f"{m_ratio:.3f}x" if m_ratio is not None else "-",
            f"{r['value_rel_diff']:.1e}" if r.get("value_rel_diff") is not None else "-",
            verdict or ("; ".join(r["error"]) if "error" in r else ""),
        ])

    print("  sinkhorn ...", flush=True)
    sk_res = _sinkhorn_bench(**sk)
    mem_method = ("torch.cuda.max_memory_allocated above the inputs" if device == "cuda" else
                  "peak RSS (getrusage) minus RSS after inputs, fresh subprocess per row, MALLOC_MMAP_THRESHOLD_=1 MiB")
    env = environment()
    md = [
        f"# divergences benchmark{' (quick sizes)' if args.quick else ''}",
        "",
        f"Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
        f"{env['torch_threads']} threads, load average at start {env['load_average_at_start'][0]:.2f}).",
        "",
        f"## Token divergence, forward KL, forward + backward, hidden {hidden}, float32",
        "",
        f"Peak memory: {mem_method}. Time: best of the timed runs after a warm-up, except the largest "
        "configurations (N x V >= 2^29), which run once (cold). Ratios are against `plain` at the same V, N.",
        f"Targets (issue #3) at V = {target_v}, N = {target_n}: peak memory <= 0.2x plain, time <= 1.2x plain.",
        "",
        md_table(["V", "N", "method", "time (s)", "time vs plain", "peak (MiB)", "peak vs plain",
                  "value rel. diff", "targets"], table),
        "",
        "Methods: " + "; ".join(f"`{k}`: {v}" for k, v in METHODS.items()) + ".",
        "",
        f"## Batched Sinkhorn vs POT, {sk_res['problems']} problems of {sk_res['size']} x {sk_res['size']}",
        "",
        f"epsilon = {sk_res['epsilon']}, {sk_res['iterations']} iterations on both sides; cost: {sk_res['cost']}. "
        f"POT {sk_res['pot_version']}: `{sk_res['pot_call']}`. Best of {sk['repeats']} runs after a warm-up.",
        "Target: >= 10x faster than POT with values equal to 1e-5 relative.",
        "",
        md_table(["implementation", "time (s)", "speedup vs POT", "max rel. diff vs POT", "target"], [
            ["POT, per problem", f"{sk_res['pot_s']:.4f}", "1.0x", "-", ""],
            *[[f"divlab sinkhorn_cost, batched, {k}" + (" thread" if r["threads"] == 1 else ""), f"{r['time_s']:.4f}",
               f"{r['speedup']:.1f}x", f"{r['max_rel_diff']:.1e}", "met" if r["target_met"] else "not met"]
              for k, r in sk_res["runs"].items()],
        ]),
        "",
    ]
    payload = {"environment": env, "memory_method": mem_method, "token": rows, "sinkhorn": sk_res,
               "targets": {"token": {"vocab": target_v, "tokens": target_n, "memory_ratio_max": 0.2, "time_ratio_max": 1.2},
                           "sinkhorn": {"speedup_min": 10, "rel_diff_max": 1e-5}},
               "quick": bool(args.quick)}
    return payload, "\n".join(md)


# ============================================================================= section: kd_overhead


def _kd_setups(quick: bool) -> list[dict]:
    """Each KD configuration: name, training data, batch size, epochs, and factories of teacher, student, optimiser."""
    import functools

    import torch

    from divlab.data import DigitsDataModule
    from divlab.models import MLP, SmallCNN, build_model

    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    digits = dm._splits["train"]
    g = torch.Generator().manual_seed(0)
    n_cifar = 64 * (2 if quick else 4)
    cifar = torch.utils.data.TensorDataset(torch.randn(n_cifar, 3, 32, 32, generator=g),
                                           torch.randint(0, 100, (n_cifar,), generator=g))
    return [
        {"name": "digits CNN -> MLP-64", "data": digits, "batch_size": 64, "epochs": 3 if quick else 8,
         "teacher": lambda: SmallCNN(in_channels=1, num_classes=10, width=32),
         "student": lambda: MLP(input_shape=[1, 8, 8], num_classes=10, hidden=[64]),
         "optimizer": functools.partial(torch.optim.AdamW, lr=0.003, weight_decay=1e-4)},
        {"name": "CIFAR-shaped resnet32x4 -> resnet8x4 (random tensors)", "data": cifar, "batch_size": 64,
         "epochs": 2, "teacher": lambda: build_model("resnet32x4", num_classes=100),
         "student": lambda: build_model("resnet8x4", num_classes=100),
         "optimizer": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)},
    ]


def _plain_kd_epochs(setup: dict, temperature: float = 4.0) -> list[float]:
    """A hand-written PyTorch KD loop: seconds of each epoch (CE + T^2 KL(teacher/T || student/T))."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    teacher, student = setup["teacher"]().eval(), setup["student"]().train()
    opt = setup["optimizer"](student.parameters())
    loader = torch.utils.data.DataLoader(setup["data"], batch_size=setup["batch_size"], shuffle=True)
    times = []
    for _ in range(setup["epochs"]):
        start = time.perf_counter()
        for x, y in loader:
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            kd = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                          reduction="batchmean", log_target=True)
            loss = F.cross_entropy(s, y) + temperature**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


def _divlab_kd_epochs(setup: dict, *, cache: bool, temperature: float = 4.0) -> tuple[list[float], float]:
    """The same steps through divlab's DistillTask in a Lightning Trainer: (seconds of each epoch, seconds
    spent computing the teacher-logit cache, 0 without it)."""
    import lightning.pytorch as pl
    import torch

    from divlab.data.loaders import seeded_train_loader
    from divlab.divergences import get_divergence
    from divlab.tasks import DistillTask
    from divlab.tasks.teacher_logits import IndexedDataset, compute_logits

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    teacher, student = setup["teacher"](), setup["student"]()
    data, logits, cache_s = setup["data"], None, 0.0
    if cache:
        start = time.perf_counter()
        logits = compute_logits(teacher, data)
        cache_s = time.perf_counter() - start
        data = IndexedDataset(data)
    task = DistillTask(model=student, teacher=teacher, divergence=get_divergence("forward_kl"),
                       temperature=temperature, optimizer=setup["optimizer"], teacher_logits=logits)
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=setup["epochs"], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, deterministic=False, callbacks=[timer])
    loader = seeded_train_loader(data, batch_size=setup["batch_size"], seed=0)
    trainer.fit(task, train_dataloaders=loader)
    return timer.times, cache_s


@section("kd_overhead")
def bench_kd_overhead(args):
    """divlab's DistillTask in a Lightning Trainer vs a plain PyTorch loop, and the teacher-logit cache."""
    import logging
    import math
    import statistics

    import torch

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    repeats = 2 if args.quick else 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # one thread for both loops: steadier on a shared machine, like for like
    rows, results = [], []
    load_start = os.getloadavg()[0]
    for setup in _kd_setups(args.quick):
        steps = math.ceil(len(setup["data"]) / setup["batch_size"])
        per_step = {"plain": [], "divlab": [], "divlab + cache": []}
        cache_s = []
        for _ in range(repeats):    # alternate the three, so load on a shared machine hits them alike
            per_step["plain"].append(min(_plain_kd_epochs(setup)[1:]) / steps)
            per_step["divlab"].append(min(_divlab_kd_epochs(setup, cache=False)[0][1:]) / steps)
            times, c = _divlab_kd_epochs(setup, cache=True)
            per_step["divlab + cache"].append(min(times[1:]) / steps)
            cache_s.append(c)
        best = {k: min(v) for k, v in per_step.items()}
        median = {k: statistics.median(v) for k, v in per_step.items()}
        ratio = best["divlab"] / best["plain"]
        speedup = best["divlab"] / best["divlab + cache"]
        r = {"config": setup["name"], "steps_per_epoch": steps, "batch_size": setup["batch_size"],
             "epochs": setup["epochs"], "repeats": repeats, "per_step_s": per_step,
             "best_per_step_s": best, "median_per_step_s": median, "overhead_ratio": ratio,
             "overhead_ratio_median": median["divlab"] / median["plain"], "target_met": ratio <= 1.05,
             "cache_speedup_per_epoch": speedup, "cache_build_s": min(cache_s)}
        results.append(r)
        print(f"  {setup['name']}: plain {best['plain'] * 1e3:.2f} ms/step, divlab {best['divlab'] * 1e3:.2f} "
              f"ms/step ({ratio:.3f}x), with cache {best['divlab + cache'] * 1e3:.2f} ms/step", flush=True)
        rows.append([setup["name"], f"{steps} x {setup['batch_size']}", f"{best['plain'] * 1e3:.2f}",
                     f"{best['divlab'] * 1e3:.2f}", f"{ratio:.3f}x ({r['overhead_ratio_median']:.3f}x)",
                     "met" if r["target_met"] else "not met", f"{best['divlab + cache'] * 1e3:.2f}",
                     f"{speedup:.2f}x", f"{r['cache_build_s']:.2f}"])
    torch.set_num_threads(threads)
    env = environment()
    md = [
        f"# kd_overhead benchmark{' (quick sizes)' if args.quick else ''}",
        "",
        f"Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
        f"1 torch thread for both loops, load average at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}).",
        "",
        "The same KD training steps (CE + T^2 KL(teacher/T || student/T), T = 4, frozen teacher in eval mode) "
        "through divlab's DistillTask in a Lightning Trainer (no validation, logging, checkpoints or progress "
        "bar; training terms tracked as in a run) and through a hand-written PyTorch loop (DataLoader, "
        "no_grad teacher, F.kl_div). Time per step = one epoch's wall time / its steps (data loading, "
        "forward, backward, optimiser step, loop overhead), after a warm-up epoch; best (median) of "
        f"{repeats} alternating repeats. Target: divlab <= 1.05x the plain loop. The cache column: "
        "teacher logits looked up by example index instead of a teacher forward per step "
        "(distill.cache_teacher_logits); its one-off cost is the build column.",
        "",
        md_table(["configuration", "steps x batch", "plain (ms/step)", "divlab (ms/step)",
                  "divlab / plain, best (median)", "<= 1.05x", "divlab + cache (ms/step)",
                  "cache speed-up per epoch", "cache build (s)"], rows),
        "",
    ]
    return {"environment": env, "results": results, "target_ratio_max": 1.05,
            "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
            "quick": bool(args.quick), "torch_threads": 1}, "\n".join(md)


# ============================================================================= main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default outputs/bench)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    for key in ("method", "device"):
        parser.add_argument(f"--{key}", help=argparse.SUPPRESS)
    for key in ("vocab", "tokens", "hidden", "repeats"):
        parser.add_argument(f"--{key}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "token":
        print(json.dumps(token_worker(args.method, args.vocab, args.tokens, args.hidden, args.repeats, args.device)))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(SECTIONS):
        print(f"== {name}", flush=True)
        payload, markdown = SECTIONS[name](args)
        (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(markdown + "\n")
        print(markdown, flush=True)
        print(f"(wrote {args.out / name}.json and .md)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
