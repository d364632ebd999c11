#!/usr/bin/env python
"""LLM-distillation throughput on GPUs: the SmolLM2-135M-Instruct teacher -> 3-block student
(experiment=lmkd/smol_fkl) in four modes, each one `divlab` run in its own process.

    python scripts/gpu_lm_distill.py [--devices N] [--n-train 512] [--batch 8] [--modes fp32,bf16,ddp,fsdp]

Modes: fp32 (trainer=gpu, 32-true) and bf16 (trainer=gpu, bf16-mixed) on one GPU; ddp (trainer=ddp_gpu: every
rank holds the student and the teacher) and fsdp (trainer=fsdp: student and teacher sharded, the student's
blocks activation-checkpointed) on N GPUs (default: all; with one GPU they run at world size 1, which checks
the code path, not the scaling). The teacher runs every step (lm_distill.teacher_outputs=online): that is the
cost the strategies differ on. One epoch of n_train rows; train/tokens_per_s is each rank's (prompt + response
tokens per second of the training epoch, without validation), reported per rank and times the world size.
Prints one JSON object. Needs CUDA; the tests never run it.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "fp32": ("trainer=gpu", "trainer.precision=32-true"),
    "bf16": ("trainer=gpu", "trainer.precision=bf16-mixed"),
    "ddp": ("trainer=ddp_gpu",),
    "fsdp": ("trainer=fsdp",),
}


def run_mode(mode: str, *, devices: int, n_train: int, batch: int, root: Path, timeout: int) -> dict:
    overrides = [
        "experiment=lmkd/smol_fkl",
        *MODES[mode],
        f"data.datamodule.n_train={n_train}",
        "data.datamodule.n_test=8",
        f"data.datamodule.batch_size={batch}",
        "lm_distill.teacher_outputs=online",
        "trainer.limit_val_batches=1",
        "callbacks=none",
        "logger=none",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        f"paths.output_root={root / mode}",
        f"paths.model_dir={root / 'models'}",  # the GGUF conversion, shared by the modes
    ]
    if mode in ("ddp", "fsdp"):
        overrides.append(f"trainer.devices={devices}")
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "divlab", *overrides], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        return {"mode": mode, "error": proc.stderr.strip().splitlines()[-1:] or proc.stdout[-500:]}
    (path,) = (root / mode).glob("lm_distill/**/metrics.json")
    record = json.loads(path.read_text())
    world = int(record["world_size"])
    per_rank = record["metrics"]["train/tokens_per_s"]
    return {
        "mode": mode,
        "world_size": world,
        "tokens_per_s_per_rank": per_rank,
        "tokens_per_s": per_rank * world,
        "train_loss": record["metrics"].get("train/loss"),
        "global_step": record["global_step"],
        "wall_s": round(time.time() - start, 1),
    }


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=0, help="GPUs for ddp and fsdp (0: all)")
    parser.add_argument("--n-train", type=int, default=512, help="training rows (one epoch)")
    parser.add_argument("--batch", type=int, default=8, help="rows per step and rank")
    parser.add_argument(
        "--modes", default="fp32,bf16,ddp,fsdp", help=f"comma-separated, of {','.join(MODES)}"
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mode")
    parser.add_argument("--root", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this script measures GPU throughput"}))
        return 1
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    devices = args.devices or torch.cuda.device_count()
    root = Path(args.root or tempfile.mkdtemp(prefix="gpu_lm_distill_"))
    results = [
        run_mode(m, devices=devices, n_train=args.n_train, batch=args.batch, root=root, timeout=args.timeout)
        for m in modes
    ]
    fp32 = next((r["tokens_per_s"] for r in results if r["mode"] == "fp32" and "tokens_per_s" in r), None)
    for r in results:
        if fp32 and "tokens_per_s" in r:
            r["speedup_vs_fp32"] = r["tokens_per_s"] / fp32
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "gpus": torch.cuda.device_count(),
                "n_train": args.n_train,
                "batch_per_rank": args.batch,
                "results": results,
                "output_root": str(root),
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
