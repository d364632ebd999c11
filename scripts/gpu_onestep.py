#!/usr/bin/env python
"""GPU check of the CIFAR-10 one-step recipe (issue 18, item 6): generator steps per second of
experiment=onestep/cifar10/fdistill_js in fp32 and bf16, and the sampling throughput of the one-step generator
against the teacher's 35-step Heun sampler (18 steps, NFE 35). Throughput only: the networks have random weights
(a full-size SongUNet written to a temporary safetensors file), so no converted NVlabs checkpoint is needed.

    python scripts/gpu_onestep.py                 # full-size networks, on the GPU (about 3 minutes on one H200)
    python scripts/gpu_onestep.py --quick         # small-channel networks, a few steps (checks the script on a CPU)

Writes $OUT/gpu_onestep.json (or outputs/bench/gpu_onestep.json) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]


class Timer(pl.Callback):
    def __init__(self):
        self.times = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def compose_cfg(teacher_file: Path, quick: bool, batch: int):
    overrides = [
        "experiment=onestep/cifar10/fdistill_js",
        "data.datamodule.root=unused",
        f"teacher.model.path={teacher_file}",
        f"one_step.batch_size={batch}",
    ]
    if quick:
        # the small teacher, class-conditional as the recipe's
        overrides += ["teacher=edm_cifar10_small", "teacher.model.network.label_dim=10", "trainer=cpu"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def generator_steps_per_s(cfg, *, precision: str, steps: int, warmup: int, batch: int, device: str) -> float:
    from divlab.tasks.one_step import build

    task = build(cfg, datamodule=None)
    images = torch.rand(batch * (steps + warmup), 3, 32, 32) * 2 - 1
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=batch)
    timer = Timer()
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=(steps + warmup) * (cfg.one_step.critic_steps + 1),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(task, train_dataloaders=loader)
    t = timer.times[warmup - 1 :]
    return (len(t) - 1) / (t[-1] - t[0])


@torch.no_grad()
def sampling_images_per_s(fn, z: torch.Tensor, *, precision: str, repeats: int) -> float:
    ctx = (
        torch.autocast(z.device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else torch.autocast(z.device.type, enabled=False)
    )
    with ctx:
        fn(z)  # warm-up
        if z.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(z)
        if z.is_cuda:
            torch.cuda.synchronize()
    return repeats * len(z) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small-channel networks and few steps (CPU check)")
    p.add_argument("--steps", type=int, default=None, help="timed generator steps per precision")
    args = p.parse_args()
    from divlab.models.edm import sample
    from divlab.models.edm_checkpoint import save_edm_network
    from divlab.tasks.one_step import build
    from divlab.utils.checks import build as build_spec

    device = "gpu" if torch.cuda.is_available() and not args.quick else "cpu"
    batch = 8 if args.quick else 256
    steps = args.steps or (2 if args.quick else 30)
    tmp = Path(tempfile.mkdtemp())
    cfg = compose_cfg(tmp / "teacher.safetensors", args.quick, batch)
    save_edm_network(build_spec(cfg.teacher.model.network), tmp / "teacher.safetensors")
    rows = {}
    for precision in ("32-true", "bf16-mixed"):
        rows[precision] = {
            "generator_steps_per_s": generator_steps_per_s(
                cfg,
                precision=precision,
                steps=steps,
                warmup=2 if args.quick else 5,
                batch=batch,
                device=device,
            )
        }
    task = build(cfg, datamodule=None).to("cuda" if device == "gpu" else "cpu")
    z = torch.randn(batch, 3, 32, 32, device=task.device)
    teacher = task.teacher.to(task.device)
    labels = task.random_labels(batch, task.device)  # classes of a conditional recipe (None: unconditional)
    for precision in ("32-true", "bf16-mixed"):
        rows[precision]["one_step_images_per_s"] = sampling_images_per_s(
            lambda x: task.generate(x, labels=labels),
            z,
            precision=precision,
            repeats=2 if args.quick else 20,
        )
        rows[precision]["heun35_images_per_s"] = sampling_images_per_s(
            lambda x: sample(
                lambda y, sigma: task.denoise(teacher, y, sigma, labels), x, method="heun", num_steps=18
            ),
            z,
            precision=precision,
            repeats=1,
        )
    info = {
        "device": torch.cuda.get_device_name() if device == "gpu" else "cpu",
        "batch": batch,
        "quick": args.quick,
        "parameters": sum(q.numel() for q in task.generator.parameters()),
        "rows": rows,
    }
    out = Path(os.environ.get("OUT") or ROOT / "outputs" / "bench") / "gpu_onestep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2))
    print(f"| precision | generator steps/s (batch {batch}) | one-step images/s | Heun NFE 35 images/s |")
    print("|---|---|---|---|")
    for precision, r in rows.items():
        print(
            f"| {precision} | {r['generator_steps_per_s']:.2f} | {r['one_step_images_per_s']:.0f} | "
            f"{r['heun35_images_per_s']:.0f} |"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
