#!/usr/bin/env python
"""Files for the CPU smoke test of the paper-scale one-step recipes (README, "One-step diffusion at paper
scale"): a tiny folder in the CIFAR-10 python format and a small-channel EDM teacher with random weights.

    python scripts/write_cifar_smoke.py smoke_cifar10
    divlab experiment=onestep/cifar10/fdistill_js trainer=cpu debug=fast data.datamodule.root=smoke_cifar10 \
        smoke=onestep_cifar10          # or smoke=onestep_cifar10_uncond: the unconditional teacher

Writes DIR/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta: `--per-file` random 32x32 RGB
images each, labels cycling through the 10 classes) and two teachers, the SongUNet of
conf/teacher/edm_cifar10_small.yaml unconditional (DIR/edm-cifar10-small.safetensors) and with label_dim 10
(DIR/edm-cifar10-small-cond.safetensors), weights drawn from N(0, 0.05^2) with `--seed` and written by
divlab.models.edm_checkpoint.save_edm_network: the files conf/smoke/onestep_cifar10*.yaml point the teacher at
(the conditional one for smoke=onestep_cifar10, as the recipes' teacher is class-conditional).
Nothing is downloaded; the pixels are noise, so the run checks the code path, not image quality.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEACHERS = {"edm-cifar10-small.safetensors": 0, "edm-cifar10-small-cond.safetensors": 10}  # file: label_dim


def write_cifar10(root: Path, *, per_file: int, seed: int) -> Path:
    """root/cifar-10-batches-py/ in the layout torchvision's CIFAR10 reads (pickle protocol 2 dicts)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [*TRAIN_FILES, "test_batch"]:
        entry = {
            "batch_label": name,
            "data": rng.integers(0, 256, size=(per_file, 3 * 32 * 32), dtype=np.uint8),  # R, G, B planes
            "labels": [i % 10 for i in range(per_file)],
            "filenames": [f"{name}_{i}.png" for i in range(per_file)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_file}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_small_teacher(path: Path, *, label_dim: int, seed: int) -> Path:
    """The network of teacher=edm_cifar10_small (with `label_dim` classes) with random weights, as a safetensors
    teacher file."""
    import torch
    from hydra import compose, initialize_config_dir

    from divlab.cli.conf_dir import conf_dir
    from divlab.models.edm_checkpoint import save_edm_network
    from divlab.utils.checks import build

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        overrides = ["teacher=edm_cifar10_small", f"teacher.model.path={path}"]
        cfg = compose("train", overrides=[*overrides, f"teacher.model.network.label_dim={label_dim}"])
    torch.manual_seed(seed)
    net = build(cfg.teacher.model.network)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    return save_edm_network(net, path, sigma_data=0.5, source="random")  # EDM: images in [-1, 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder to write (data.datamodule.root of the smoke command)")
    p.add_argument("--per-file", type=int, default=32, help="images per CIFAR batch file (6 files)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pixels and of the teacher's weights")
    args = p.parse_args()
    if args.per_file < 10:
        raise SystemExit("error: --per-file must be at least 10 (one image of each class per file)")
    folder = write_cifar10(args.root, per_file=args.per_file, seed=args.seed)
    for name, label_dim in TEACHERS.items():
        write_small_teacher(args.root / name, label_dim=label_dim, seed=args.seed)
    print(f"wrote {folder} and {', '.join(TEACHERS)} in {args.root}")


if __name__ == "__main__":
    main()
