#!/usr/bin/env python
"""KD training throughput on one GPU: resnet32x4 -> resnet8x4 steps on random CIFAR-shaped tensors.

    python scripts/gpu_kd_throughput.py [--batch 64] [--steps 50] [--warmup 10]

Each step is the CIFAR-100 recipe's KD step through divlab's DistillTask: frozen teacher forward (no_grad,
eval), student forward, CE + T^2 KL(teacher/T || student/T) with T = 4, backward, SGD (momentum 0.9,
lr 0.05, weight decay 5e-4) step. Modes: fp32; bf16-mixed (torch.autocast, bfloat16; the divergence itself
computes in float32); bf16-mixed + channels_last (models and inputs in channels_last memory format).
Inputs stay on the GPU (no data loading), so this is the model's compute ceiling. Prints one JSON object:
images/s per mode, the device, and the library versions.
"""

import argparse
import json
import platform
import sys
import time

import torch


def kd_steps(*, mode: str, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    from divlab.divergences import get_divergence
    from divlab.models import build_model
    from divlab.tasks import DistillTask

    torch.manual_seed(0)
    channels_last = mode.endswith("channels_last")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher = build_model("resnet32x4", num_classes=100).to(device, memory_format=memory_format)
    student = build_model("resnet8x4", num_classes=100)
    task = DistillTask(
        model=student,
        teacher=teacher,
        divergence=get_divergence("forward_kl"),
        temperature=4.0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    task.to(device, memory_format=memory_format)  # the student and the task's metrics (task.device)
    optimizer = task.configure_optimizers()
    x = torch.randn(batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode.startswith("bf16"))
    task.train()

    def step():
        with autocast:
            loss = task.training_step((x, y), 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "images_per_s": batch * steps / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "final_loss": float(loss),
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per step (the recipe's 64)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this script measures GPU throughput"}))
        return 1
    import lightning

    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    results = []
    for mode in ("fp32", "bf16-mixed", "bf16-mixed+channels_last"):
        torch.cuda.reset_peak_memory_stats()
        results.append(
            kd_steps(mode=mode, batch=args.batch, steps=args.steps, warmup=args.warmup, device=device)
        )
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup_vs_fp32"] = r["images_per_s"] / base
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "batch": args.batch,
                "steps": args.steps,
                "warmup": args.warmup,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "results": results,
                "versions": {
                    "torch": torch.__version__,
                    "lightning": lightning.__version__,
                    "python": platform.python_version(),
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
