"""Bad input fails before training, in one sentence naming the key, and leaves finished runs alone."""

import json
from pathlib import Path

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import run


@pytest.fixture
def finished_run(compose_cfg) -> Path:
    record = run(compose_cfg("experiment=kd/digits"))
    return Path(record["run_dir"]) / "metrics.json"


def not_divlab_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return str(path)


def pickled_object_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "pickled.ckpt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    return str(path)


CASES = {
    "unknown divergence": (
        lambda tmp: ["divergence.name=kullback"],
        r"divergence\.name=.*choose one of: .*forward_kl",
    ),
    "temperature zero": (lambda tmp: ["distill.temperature=0"], r"distill\.temperature must be a number > 0"),
    "temperature negative": (lambda tmp: ["distill.temperature=-1"], r"distill\.temperature"),
    "negative kd weight": (
        lambda tmp: ["distill.kd_weight=-0.5"],
        r"distill\.kd_weight must be a number >= 0",
    ),
    "negative ce weight": (lambda tmp: ["distill.ce_weight=-1"], r"distill\.ce_weight"),
    "missing checkpoint": (
        lambda tmp: [f"teacher.checkpoint={tmp}/nope.ckpt"],
        r"teacher\.checkpoint=.*nope\.ckpt does not exist",
    ),
    "sample divergence in distill": (
        lambda tmp: ["divergence=mmd"],
        r"divergence=mmd compares sets of samples",
    ),
    "alpha outside its range": (
        lambda tmp: ["divergence=skew_kl", "divergence.alpha=1.5"],
        r"bad divergence\.\* setting: .*alpha must be in \[0, 1\)",
    ),
    "class mismatch": (
        lambda tmp: ["teacher.model.num_classes=7"],
        r"teacher\.model has 7 classes but student\.model has 10",
    ),
    "not a divlab checkpoint": (
        lambda tmp: [f"teacher.checkpoint={not_divlab_checkpoint(tmp)}"],
        r"teacher\.checkpoint=.* is not a divlab checkpoint",
    ),
    "pickled objects": (
        lambda tmp: [f"teacher.checkpoint={pickled_object_checkpoint(tmp)}"],
        r"teacher\.checkpoint=.*cannot be read as a weights-only",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_early_and_keeps_finished_runs(
    compose_cfg, finished_run, tmp_path, monkeypatch, case
):
    make_overrides, message = CASES[case]
    before = finished_run.read_text()
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("training started on bad input"))
    with pytest.raises(ConfigError, match=message) as info:
        run(compose_cfg("experiment=kd/digits", "rerun=true", *make_overrides(tmp_path)))
    assert "\n" not in str(info.value)
    assert finished_run.read_text() == before and json.loads(before)["metrics"]["test/acc"] >= 0


def test_explicit_teacher_checkpoint_loads(compose_cfg, teacher_dir):
    from divlab.provision.teacher import cached_teacher_path

    cfg = compose_cfg("experiment=kd/digits")
    run(cfg)
    cached = cached_teacher_path(cfg)  # this run's teacher (the session's cache holds other models too)
    assert cached.is_file()
    record = run(compose_cfg("experiment=kd/digits", f"teacher.checkpoint={cached}", "seed=5"))
    assert record["metrics"]["test/acc"] > 0.1


def test_run_checkpoint_works_as_teacher(compose_cfg):
    """A classify run's checkpoint (Lightning format with divlab metadata) is a valid teacher."""
    record = run(compose_cfg("experiment=kd/digits_ce", "student=digits_cnn_small"))
    last = Path(record["run_dir"]) / "checkpoints" / "last.ckpt"
    distilled = run(
        compose_cfg("experiment=kd/digits", "teacher.model.width=8", f"teacher.checkpoint={last}")
    )
    assert distilled["metrics"]["test/acc"] > 0.1


@pytest.mark.parametrize(
    ("trainer", "launcher", "refused"),
    [
        (["trainer.strategy=ddp"], "BasicLauncher", True),
        (["trainer.strategy=fsdp"], "BasicLauncher", True),
        (["trainer.strategy=auto", "trainer.devices=2"], "BasicLauncher", True),  # auto picks ddp
        (["trainer.strategy=ddp_spawn", "trainer.devices=2"], "BasicLauncher", False),
        (["trainer.strategy=auto", "trainer.devices=1"], "BasicLauncher", False),
        (
            ["trainer.strategy=ddp"],
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
            False,
        ),
        (
            ["trainer.strategy=ddp"],
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
            True,
        ),
    ],
)
def test_multirun_strategy_check(compose_cfg, monkeypatch, trainer, launcher, refused):
    from divlab.utils import checks

    monkeypatch.setattr(checks, "hydra_mode", lambda: (True, launcher))
    cfg = compose_cfg("experiment=kd/digits", "trainer=ddp_sim", *trainer)
    if refused:
        with pytest.raises(ConfigError, match=r"cannot run under Hydra multirun"):
            checks.check_config(cfg)
    else:
        checks.check_config(cfg)
