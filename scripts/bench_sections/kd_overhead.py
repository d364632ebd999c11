"""Section `kd_overhead`: divlab's KD training loop (Lightning) against a hand-written loop, per epoch."""

from __future__ import annotations

import os
import time
import warnings

from bench_sections.common import environment, md_table, section

# CPU seconds of this process: both loops run on one torch thread in this process (no loader workers), so
# this is their work, which busy neighbours on a shared machine do not inflate as they do wall time.
CLOCK = time.process_time

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
    cifar = torch.utils.data.TensorDataset(
        torch.randn(n_cifar, 3, 32, 32, generator=g), torch.randint(0, 100, (n_cifar,), generator=g)
    )
    return [
        {
            "name": "digits CNN -> MLP-64",
            "data": digits,
            "batch_size": 64,
            "epochs": 3 if quick else 8,
            "teacher": lambda: SmallCNN(in_channels=1, num_classes=10, width=32),
            "student": lambda: MLP(input_shape=[1, 8, 8], num_classes=10, hidden=[64]),
            "optimizer": functools.partial(torch.optim.AdamW, lr=0.003, weight_decay=1e-4),
        },
        {
            "name": "CIFAR-shaped resnet32x4 -> resnet8x4 (random tensors)",
            "data": cifar,
            "batch_size": 64,
            "epochs": 2,
            "teacher": lambda: build_model("resnet32x4", num_classes=100),
            "student": lambda: build_model("resnet8x4", num_classes=100),
            "optimizer": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
        },
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
        start = CLOCK()
        for x, y in loader:
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            kd = F.kl_div(
                F.log_softmax(s / temperature, -1),
                F.log_softmax(t / temperature, -1),
                reduction="batchmean",
                log_target=True,
            )
            loss = F.cross_entropy(s, y) + temperature**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(CLOCK() - start)
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
            self.start = CLOCK()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(CLOCK() - self.start)

    torch.manual_seed(0)
    teacher, student = setup["teacher"](), setup["student"]()
    data, logits, cache_s = setup["data"], None, 0.0
    if cache:
        start = time.perf_counter()
        logits = compute_logits(teacher, data)
        cache_s = time.perf_counter() - start
        data = IndexedDataset(data)
    task = DistillTask(
        model=student,
        teacher=teacher,
        divergence=get_divergence("forward_kl"),
        temperature=temperature,
        optimizer=setup["optimizer"],
        teacher_logits=logits,
    )
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=setup["epochs"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=False,
        callbacks=[timer],
    )
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
    torch.set_num_threads(1)  # one thread for both loops: steadier on a shared machine, like for like
    rows, results = [], []
    load_start = os.getloadavg()[0]
    for setup in _kd_setups(args.quick):
        steps = math.ceil(len(setup["data"]) / setup["batch_size"])
        per_step = {"plain": [], "divlab": [], "divlab + cache": []}
        cache_s = []
        for _ in range(repeats):  # alternate the three, so load on a shared machine hits them alike
            per_step["plain"].append(min(_plain_kd_epochs(setup)[1:]) / steps)
            per_step["divlab"].append(min(_divlab_kd_epochs(setup, cache=False)[0][1:]) / steps)
            times, c = _divlab_kd_epochs(setup, cache=True)
            per_step["divlab + cache"].append(min(times[1:]) / steps)
            cache_s.append(c)
        best = {k: min(v) for k, v in per_step.items()}
        median = {k: statistics.median(v) for k, v in per_step.items()}
        ratio = best["divlab"] / best["plain"]
        speedup = best["divlab"] / best["divlab + cache"]
        r = {
            "config": setup["name"],
            "steps_per_epoch": steps,
            "batch_size": setup["batch_size"],
            "epochs": setup["epochs"],
            "repeats": repeats,
            "per_step_s": per_step,
            "best_per_step_s": best,
            "median_per_step_s": median,
            "overhead_ratio": ratio,
            "overhead_ratio_median": median["divlab"] / median["plain"],
            "target_met": ratio <= 1.05,
            "cache_speedup_per_epoch": speedup,
            "cache_build_s": min(cache_s),
        }
        results.append(r)
        print(
            f"  {setup['name']}: plain {best['plain'] * 1e3:.2f} ms/step, divlab {best['divlab'] * 1e3:.2f} "
            f"ms/step ({ratio:.3f}x), with cache {best['divlab + cache'] * 1e3:.2f} ms/step",
            flush=True,
        )
        rows.append(
            [
                setup["name"],
                f"{steps} x {setup['batch_size']}",
                f"{best['plain'] * 1e3:.2f}",
                f"{best['divlab'] * 1e3:.2f}",
                f"{ratio:.3f}x ({r['overhead_ratio_median']:.3f}x)",
                "met" if r["target_met"] else "not met",
                f"{best['divlab + cache'] * 1e3:.2f}",
                f"{speedup:.2f}x",
                f"{r['cache_build_s']:.2f}",
            ]
        )
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
        "no_grad teacher, F.kl_div). Time per step = one epoch's time / its steps (data loading, "
        "forward, backward, optimiser step, loop overhead; CPU time of the process, time.process_time, "
        "which other processes on a shared machine do not inflate), after a warm-up epoch; best (median) of "
        f"{repeats} alternating repeats. Target: divlab <= 1.05x the plain loop. The cache column: "
        "teacher logits looked up by example index instead of a teacher forward per step "
        "(distill.cache_teacher_logits); its one-off cost is the build column.",
        "",
        md_table(
            [
                "configuration",
                "steps x batch",
                "plain (ms/step)",
                "divlab (ms/step)",
                "divlab / plain, best (median)",
                "<= 1.05x",
                "divlab + cache (ms/step)",
                "cache speed-up per epoch",
                "cache build (s)",
            ],
            rows,
        ),
        "",
    ]
    return {
        "environment": env,
        "results": results,
        "target_ratio_max": 1.05,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "quick": bool(args.quick),
        "torch_threads": 1,
    }, "\n".join(md)
