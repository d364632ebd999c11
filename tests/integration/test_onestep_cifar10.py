"""The paper-scale one-step recipes (conf/experiment/onestep/cifar10/, imagenet64/) compose with their teachers'
full-size networks, and the small-channel CIFAR-10 teacher builds from a safetensors file through the config."""

import pytest
import torch
from omegaconf import OmegaConf

from divlab.models.edm_checkpoint import save_edm_network
from divlab.models.edm_networks import EDM_REFERENCE_PARAMS
from divlab.utils.checks import build as build_spec

RECIPES = [
    f"onestep/{d}/{n}"
    for d in ("cifar10", "imagenet64")
    for n in ("fdistill_js", "fdistill_fkl", "dmd2", "sid", "uni_instruct")
]
OBJECTIVE = {
    "fdistill_js": ("fdistill", "js"),
    "fdistill_fkl": ("fdistill", "forward_kl"),
    "dmd2": ("fdistill", "reverse_kl"),
    "sid": ("sid", None),
    "uni_instruct": ("uni_instruct", None),
}


@pytest.mark.parametrize("experiment", RECIPES)
def test_recipe_composes_with_the_reference_network(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}", "data.datamodule.root=unused", fast=False)
    name = experiment.rsplit("/", 1)[1]
    objective, divergence = OBJECTIVE[name]
    assert cfg.one_step.objective == objective
    if divergence is not None:
        assert cfg.divergence.name == divergence
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.data.sigma_data == 0.5 and cfg.data.datamodule.augment is False
    assert cfg.teacher.checkpoint == "pretrained"
    assert cfg.teacher.model.path.endswith(".safetensors")
    student = OmegaConf.to_container(cfg.student.model, resolve=True)
    assert student == OmegaConf.to_container(cfg.teacher.model.network, resolve=True)
    with torch.device("meta"):
        net = build_spec(cfg.student.model)
    key = "cifar10_cond" if "cifar10" in experiment else "imagenet64_cond"  # class-conditional teachers
    assert sum(p.numel() for p in net.parameters()) == EDM_REFERENCE_PARAMS[key]


def test_small_teacher_builds_from_a_safetensors_file(compose_cfg, tmp_path):
    from divlab.tasks.sample_teacher import build_diffusion_teacher

    cfg = compose_cfg(
        "experiment=onestep/cifar10/fdistill_js",
        "teacher=edm_cifar10_small",
        "trainer=cpu",
        "data.datamodule.root=unused",
        f"teacher.model.path={tmp_path / 'small.safetensors'}",
    )
    torch.manual_seed(0)
    net = build_spec(cfg.teacher.model.network)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    save_edm_network(net, tmp_path / "small.safetensors")
    teacher = build_diffusion_teacher(cfg, datamodule=None)
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, tensor in net.state_dict().items():
        assert torch.equal(teacher.net.state_dict()[name], tensor), name
    assert build_spec(cfg.student.model).state_dict().keys() == net.state_dict().keys()


@pytest.fixture
def cifar_and_small_teacher(tmp_path, data_writer):
    """CIFAR-format files under tmp_path/data and a small-channel SongUNet teacher file (random weights)."""
    from divlab.models.edm_networks import SongUNet

    data_writer("write_cifar")(tmp_path / "data", 10, per_file=16)
    torch.manual_seed(0)
    net = SongUNet(
        img_resolution=32,
        augment_dim=9,
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(16,),
        dropout=0.0,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    save_edm_network(net, tmp_path / "small.safetensors")
    return tmp_path / "data", tmp_path / "small.safetensors", net


@pytest.mark.parametrize("objective", ["fdistill", "sid"])
def test_one_step_trains_the_small_songunet_on_cifar_batches(compose_cfg, cifar_and_small_teacher, objective):
    """The one-step task with EDM's network (teacher features for the discriminator, generator and fake score
    copied from the teacher). Built without a data module, so without the classifier scorer that
    data=cifar10 lacks (see the report of issue 18)."""
    import lightning.pytorch as pl

    from divlab.data import CIFAR10DataModule
    from divlab.tasks.one_step import build

    root, path, _ = cifar_and_small_teacher
    cfg = compose_cfg(
        "experiment=onestep/cifar10/fdistill_js",
        "trainer=cpu",
        "teacher=edm_cifar10_small",
        f"teacher.model.path={path}",
        f"data.datamodule.root={root}",
        "one_step.batch_size=8",
        "one_step.critic_steps=2",
        "one_step.gan_weight=0.1",
        f"one_step.objective={objective}",
    )
    task = build(cfg, datamodule=None)
    before = {k: v.clone() for k, v in task.generator.state_dict().items()}
    assert all(
        torch.equal(before[k], v) for k, v in task.teacher.state_dict().items()
    )  # starts at the teacher
    dm = CIFAR10DataModule(root=str(root), check_integrity=False, augment=False, batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=dm)
    assert int(task.generator_steps) == 2  # (K + 1) optimiser steps per generator step
    assert any(not torch.equal(before[k], v) for k, v in task.generator.state_dict().items())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in trainer.callback_metrics.values())


@pytest.mark.slow  # a CLI subprocess: ~25 s on the loaded 2-core machine
def test_evaluate_task_scores_a_saved_generator_from_the_cli(run_cli, cifar_and_small_teacher, tmp_path):
    import json

    root, path, net = cifar_and_small_teacher
    state = {f"generator_ema.module.net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"divlab": {"kind": "lightning"}, "state_dict": state}, tmp_path / "g.ckpt")
    result = run_cli(
        "experiment=onestep/cifar10/fdistill_js",
        "task=evaluate",
        "trainer=cpu",
        "debug=fast",
        "trainer.precision=32-true",
        f"data.datamodule.root={root}",
        "data.datamodule.check_integrity=false",
        "data.datamodule.num_workers=0",
        "teacher=edm_cifar10_small",
        f"teacher.model.path={path}",
        f"evaluate.generator={tmp_path / 'g.ckpt'}",
        "evaluate.num_samples=40",
        "evaluate.batch_size=16",
        "evaluate.pr_samples=30",
        "+evaluate.features.pool._target_=divlab.metrics.fid.PooledPixels",
        "+evaluate.features.logits._target_=divlab.metrics.fid.PooledPixels",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("run_dir: ")][
        -1
    ]
    metrics = json.loads((tmp_path / run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["test/num_generated"] == 40 and metrics["test/num_reference"] == 80  # 5 train files x 16
    assert metrics["test/fid"] > 0 and 0 <= metrics["test/precision"] <= 1
