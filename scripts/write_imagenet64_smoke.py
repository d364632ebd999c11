#!/usr/bin/env python
"""Files for the CPU smoke test of the ImageNet 64x64 one-step recipes (README, "One-step diffusion at paper
scale"): a tiny image folder in the layout of data=image_folder and a small-channel EDM ADM teacher with random
weights.

    python scripts/write_imagenet64_smoke.py smoke_imagenet64
    divlab experiment=onestep/imagenet64/fdistill_js trainer=cpu debug=fast data.datamodule.root=smoke_imagenet64 \
        smoke=onestep_imagenet64

Writes DIR/train/<class>/*.png (`--train` images per class) and DIR/val/<class>/*.png (`--val` per class; the test
split of data=image_folder is val when there is no test/), 10 classes named like ImageNet's synset folders, random
RGB images of 80x64 pixels (the recipe's transform resizes the short side to 64 and centre-crops), and
DIR/edm-imagenet64-small.safetensors: the DhariwalUNet of conf/smoke/onestep_imagenet64.yaml (composed from that
file, so the two cannot drift apart), weights drawn from N(0, 0.05^2) with `--seed`, written by
divlab.models.edm_checkpoint.save_edm_network. Nothing is downloaded; the pixels are noise, so the run checks the
code path, not image quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = [f"n{i:08d}" for i in range(10)]  # as conf/smoke/onestep_imagenet64.yaml's data.num_classes
TEACHER = "edm-imagenet64-small.safetensors"


def write_image_folder(root: Path, *, per_class: dict[str, int], seed: int) -> Path:
    """root/<split>/<class>/<k>.png: random RGB images, 80 wide and 64 high."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"{name}_{k}.png")
    return root


def write_small_teacher(root: Path, *, seed: int) -> Path:
    """The teacher network of the smoke config (recipe + smoke=onestep_imagenet64) with random weights."""
    import torch
    from hydra import compose, initialize_config_dir

    from divlab.cli.conf_dir import conf_dir
    from divlab.models.edm_checkpoint import save_edm_network
    from divlab.utils.checks import build

    overrides = [
        "experiment=onestep/imagenet64/fdistill_js",
        "trainer=cpu",
        "smoke=onestep_imagenet64",
        f"data.datamodule.root={root}",
    ]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(seed)
    net = build(cfg.teacher.model.network)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    path = Path(cfg.teacher.model.path)
    return save_edm_network(net, path, sigma_data=float(cfg.data.sigma_data), source="random")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder to write (data.datamodule.root of the smoke command)")
    p.add_argument("--train", type=int, default=5, help="training images per class (10 classes)")
    p.add_argument("--val", type=int, default=3, help="validation (and test) images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the pixels and of the teacher's weights")
    args = p.parse_args()
    if args.train < 1 or args.val < 1:
        raise SystemExit("error: --train and --val must be at least 1 (every class needs images)")
    write_image_folder(args.root, per_class={"train": args.train, "val": args.val}, seed=args.seed)
    teacher = write_small_teacher(args.root, seed=args.seed)
    print(f"wrote {args.root}/train, {args.root}/val ({len(CLASSES)} classes) and {teacher}")


if __name__ == "__main__":
    main()
