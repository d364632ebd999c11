"""The README's CPU smoke tests of the paper-scale one-step recipes (issue 18): the files of
scripts/write_cifar_smoke.py (or write_imagenet64_smoke.py), then `divlab experiment=onestep/cifar10/<recipe>
trainer=cpu debug=fast data.datamodule.root=smoke_cifar10 smoke=onestep_cifar10` (or the imagenet64 ones),
exactly as a user types them."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "smoke_cifar10"
SMOKE_IMAGENET = "smoke_imagenet64"
WRITERS = {SMOKE: "write_cifar_smoke.py", SMOKE_IMAGENET: "write_imagenet64_smoke.py"}


def write_smoke_files(tmp_path: Path, folder: str = SMOKE) -> Path:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / WRITERS[folder]), folder],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp_path / folder


def run_smoke(run_cli, tmp_path: Path, recipe: str, smoke: str, folder: str = SMOKE) -> tuple[Path, dict]:
    write_smoke_files(tmp_path, folder)
    result = run_cli(
        f"experiment=onestep/{recipe}" if "/" in recipe else f"experiment=onestep/cifar10/{recipe}",
        "trainer=cpu",
        "debug=fast",
        f"data.datamodule.root={folder}",
        f"smoke={smoke}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("run_dir: ")]
    assert lines, result.stdout[-2000:]
    run_dir = tmp_path / lines[-1].split(": ", 1)[1]
    return run_dir, json.loads((run_dir / "metrics.json").read_text())["metrics"]


def generator_moved_from_teacher(run_dir: Path, teacher_file: Path) -> bool:
    from safetensors.torch import load_file

    teacher = load_file(str(teacher_file))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    generator = {
        k.removeprefix("generator.net."): v for k, v in state.items() if k.startswith("generator.net.")
    }
    assert generator.keys() == teacher.keys()  # the generator is the teacher's network ...
    return any(
        not torch.equal(generator[k], teacher[k]) for k in teacher
    )  # ... trained away from its weights


def test_cifar10_fdistill_smoke_command_runs_on_cpu(run_cli, tmp_path):
    """The recipes' teacher is class-conditional, and so is the smoke's: labels reach every network call (an
    unconditional call of a conditional SongUNet stops with a ConfigError)."""
    run_dir, metrics = run_smoke(run_cli, tmp_path, "fdistill_js", "onestep_cifar10")
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    for key in (
        "test/sliced_w",
        "test/mmd",
        "test/precision",
        "val/sliced_w",
        "train/gen_distill",
        "train/disc",
    ):
        assert key in metrics, key
    # debug=fast: 3 data batches of 16, one_step.batch_size 8 -> 2 rounds (2 critic + 1 generator update) each
    assert metrics["train/generator_steps"] == 6
    assert metrics["test/sliced_w"] > 0
    assert (run_dir / "samples.png").stat().st_size > 0
    config = (run_dir / "config.yaml").read_text()
    assert "normalize: edm" in config and "objective: fdistill" in config and "name: js" in config
    assert "label_dim: 10" in config
    assert generator_moved_from_teacher(run_dir, tmp_path / SMOKE / "edm-cifar10-small-cond.safetensors")


def test_cifar10_recipes_are_class_conditional_and_uncond_is_an_override(compose_cfg):
    cond = compose_cfg("experiment=onestep/cifar10/sid", "data.datamodule.root=unused", fast=False)
    assert cond.teacher.model.network.label_dim == 10
    assert cond.teacher.model.path.endswith("edm-cifar10-32x32-cond-vp.safetensors")
    uncond = compose_cfg(
        "experiment=onestep/cifar10/sid",
        "teacher=edm_cifar10_uncond",
        "data.datamodule.root=unused",
        fast=False,
    )
    assert uncond.teacher.model.network.label_dim == 0
    assert uncond.teacher.model.path.endswith("edm-cifar10-32x32-uncond-vp.safetensors")
    smoke = compose_cfg(
        "experiment=onestep/cifar10/sid",
        "trainer=cpu",
        f"data.datamodule.root={SMOKE}",
        "smoke=onestep_cifar10_uncond",
    )
    assert smoke.teacher.model.network.label_dim == 0 and smoke.teacher.model.network.model_channels == 16
    assert smoke.teacher.model.path == f"{SMOKE}/edm-cifar10-small.safetensors"


@pytest.mark.slow  # ~26 s; the image-folder path itself is in test_onestep_image_folder.py
def test_imagenet64_fdistill_smoke_command_runs_on_cpu(run_cli, tmp_path):
    """The ImageNet-64 recipe on data=image_folder: real batches (images and class labels) from the folder's
    loaders, the val/test reference from the first one_step.eval_samples images of its loaders."""
    recipe = "imagenet64/fdistill_js"
    run_dir, metrics = run_smoke(run_cli, tmp_path, recipe, "onestep_imagenet64", SMOKE_IMAGENET)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    for key in (
        "test/sliced_w",
        "test/mmd",
        "test/precision",
        "val/sliced_w",
        "train/gen_distill",
        "train/disc",
    ):
        assert key in metrics, key
    # debug=fast: 3 data batches of 16 (50 training images), one_step.batch_size 8 -> 2 rounds each
    assert metrics["train/generator_steps"] == 6
    assert (run_dir / "samples.png").stat().st_size > 0
    config = (run_dir / "config.yaml").read_text()
    assert "divlab.data.ImageFolderDataModule" in config and "DhariwalUNet" in config
    assert "label_dim: 10" in config and "objective: fdistill" in config and "name: js" in config
    assert generator_moved_from_teacher(
        run_dir, tmp_path / SMOKE_IMAGENET / "edm-imagenet64-small.safetensors"
    )


@pytest.mark.slow  # two more CLI runs (~1 min on the loaded 2-core machine)
def test_cifar10_uni_instruct_smoke_runs_class_conditional(run_cli, tmp_path):
    """Another objective, with the class-conditional teacher, then task=evaluate samples the saved generator
    with balanced classes."""
    run_dir, metrics = run_smoke(run_cli, tmp_path, "uni_instruct", "onestep_cifar10")
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["train/generator_steps"] == 6
    assert "label_dim: 10" in (run_dir / "config.yaml").read_text()
    assert generator_moved_from_teacher(run_dir, tmp_path / SMOKE / "edm-cifar10-small-cond.safetensors")
    # task=evaluate over the saved conditional generator (stand-in features for Inception: nothing downloaded)
    result = run_cli(
        "experiment=onestep/cifar10/uni_instruct",
        "task=evaluate",
        "trainer=cpu",
        "debug=fast",
        f"data.datamodule.root={SMOKE}",
        "smoke=onestep_cifar10",
        f"evaluate.generator={run_dir / 'checkpoints' / 'last.ckpt'}",
        "evaluate.num_samples=40",
        "evaluate.batch_size=16",
        "evaluate.pr_samples=30",
        "+evaluate.features.pool._target_=divlab.metrics.fid.PooledPixels",
        "+evaluate.features.logits._target_=divlab.metrics.fid.PooledPixels",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("run_dir: ")][-1]
    scores = json.loads((tmp_path / line.split(": ", 1)[1] / "metrics.json").read_text())["metrics"]
    assert scores["test/num_generated"] == 40 and scores["test/num_reference"] == 5 * 32  # train split
    assert math.isfinite(scores["test/fid"]) and scores["test/fid"] > 0


def test_cifar_edm_normalisation_maps_pixels_to_minus_one_one(tmp_path, data_writer):
    from divlab.data import CIFAR10DataModule
    from divlab.errors import ConfigError

    written = data_writer("write_cifar")(tmp_path, 10, per_file=12)
    dm = CIFAR10DataModule(root=str(tmp_path), check_integrity=False, augment=False, normalize="edm")
    test = dm.points("test")
    pixels = torch.from_numpy(written["test_batch"]).reshape(-1, 3, 32, 32).float()
    assert torch.allclose(test, pixels / 127.5 - 1.0, atol=1e-6)
    assert dm.labels("test").tolist() == [i % 10 for i in range(12)]
    image, _ = next(iter(dm.test_dataloader()))  # the loaders' images are the points' images
    assert torch.allclose(image, test[: len(image)], atol=1e-6)
    assert (dm.mean, dm.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # what task=evaluate undoes
    with pytest.raises(ConfigError, match="data.datamodule.normalize"):
        CIFAR10DataModule(root=str(tmp_path), check_integrity=False, normalize="unit")
