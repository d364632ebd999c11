"""Short classify/distill runs in-process: run directories, teacher cache, resume, reruns."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import divlab.provision.teacher
from divlab.runner import run, run_directory


def read_record(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def test_classify_run_writes_run_directory(compose_cfg, outputs):
    cfg = compose_cfg("experiment=kd/digits_ce", "seed=3")
    record = run(cfg)
    run_dir = Path(record["run_dir"])
    assert run_dir.parent.parent == outputs / "classify" / "kd_digits_ce"
    assert run_dir.name == "seed3" and len(run_dir.parent.name) == 10
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    saved = read_record(run_dir)
    assert saved["metrics"]["test/acc"] == record["metrics"]["test/acc"]
    assert 0.0 <= saved["metrics"]["test/acc"] <= 1.0
    for key in ("val/acc", "best/val/acc", "best/test/acc", "test/loss"):
        assert key in saved["metrics"], key
    for key in ("wall_time_s", "config_hash", "seed", "versions"):
        assert key in saved
    assert saved["config_hash"] == run_dir.parent.name and saved["versions"]["torch"] == torch.__version__


def test_run_directory_ignores_logging_keys_but_not_training_keys(compose_cfg):
    a = run_directory(compose_cfg("experiment=kd/digits"))
    assert run_directory(compose_cfg("experiment=kd/digits", "logger=tensorboard", "callbacks=none")) == a
    assert run_directory(compose_cfg("experiment=kd/digits", "distill.temperature=2")) != a
    assert run_directory(compose_cfg("experiment=kd/digits", "seed=1")).parent == a.parent


def test_distill_run_keeps_teacher_frozen_and_out_of_checkpoint(compose_cfg, teacher_dir):
    cfg = compose_cfg("experiment=kd/digits", "divergence=reverse_kl", "distill.temperature=2")
    record = run(cfg)
    assert record["metrics"]["test/acc"] > 0.1
    ckpt = torch.load(Path(record["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("model.") for k in ckpt["state_dict"])
    cached = list(teacher_dir.glob("*.ckpt"))
    assert cached, "the teacher was not cached"
    teacher = torch.load(cached[0], weights_only=True)
    assert teacher["divlab"]["kind"] == "teacher"


def test_teacher_cache_is_reused(compose_cfg, monkeypatch, capsys):
    run(compose_cfg("experiment=kd/digits", "seed=0"))

    def refuse(*args, **kwargs):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(divlab.provision.teacher, "train_teacher", refuse)
    record = run(compose_cfg("experiment=kd/digits", "seed=1"))
    assert record["metrics"]["test/acc"] > 0.1


class Preempt(Callback):
    """Kills training at the start of `epoch`, after last.ckpt of the previous epoch was written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def test_resume_gives_the_same_final_metrics_exactly(compose_cfg, tmp_path):
    overrides = ["experiment=kd/digits", "trainer.max_epochs=4", "trainer.limit_train_batches=4"]
    straight = run(compose_cfg(*overrides, f"paths.output_root={tmp_path / 'a'}"))
    cfg = compose_cfg(*overrides, f"paths.output_root={tmp_path / 'b'}")
    with pytest.raises(RuntimeError, match="simulated preemption"):
        run(cfg, extra_callbacks=[Preempt(epoch=2)])
    run_dir = run_directory(cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "metrics.json").exists()
    resumed = run(compose_cfg(*overrides, f"paths.output_root={tmp_path / 'b'}"))
    assert resumed["resumed_from"] and not straight["resumed_from"]
    assert resumed["metrics"] == straight["metrics"]
    assert resumed["global_step"] == straight["global_step"]


def test_finished_run_is_reported_not_retrained(compose_cfg, monkeypatch, capsys):
    first = run(compose_cfg("experiment=kd/digits_ce"))
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("a finished run was retrained"))
    again = run(compose_cfg("experiment=kd/digits_ce"))
    out = capsys.readouterr().out.strip().splitlines()
    assert again == first
    assert "already finished" in out[-2] and out[-1] == f"run_dir: {first['run_dir']}"


def test_rerun_true_trains_again(compose_cfg):
    first = run(compose_cfg("experiment=kd/digits_ce"))
    second = run(compose_cfg("experiment=kd/digits_ce", "rerun=true"))
    assert second["run_dir"] == first["run_dir"] and second["finished_at"] >= first["finished_at"]
    assert second["metrics"] == first["metrics"]  # deterministic on CPU


def test_loggers_write_inside_the_run_directory(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    for seed, (logger, folder) in enumerate((("tensorboard", "tensorboard"), ("wandb", "wandb"))):
        record = run(compose_cfg("experiment=kd/digits_ce", f"logger={logger}", f"seed={seed}"))
        run_dir = Path(record["run_dir"])
        assert (run_dir / folder).is_dir(), f"logger={logger} wrote nothing under {run_dir}"
    import wandb

    assert wandb.run is None  # wandb.finish() was called
    assert os.environ["WANDB_MODE"] == "offline"
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize("name", ["hinton_kd", "dkd", "pld", "sinkd", "js"])
def test_distill_with_library_losses(compose_cfg, name):
    """Label-taking (dkd, pld) and own-temperature (hinton_kd, dkd, sinkd) losses plug into distill."""
    record = run(compose_cfg("experiment=kd/digits", f"divergence={name}"))
    assert 0.0 <= record["metrics"]["test/acc"] <= 1.0 and math.isfinite(record["metrics"]["train/kd"])


def test_own_temperature_is_not_applied_twice(compose_cfg):
    from hydra.utils import instantiate

    from divlab.tasks import DistillTask

    cfg = compose_cfg("experiment=kd/digits", "divergence=hinton_kd", "distill.temperature=3")
    student = instantiate(cfg.student.model)
    task = DistillTask(
        model=student,
        teacher=instantiate(cfg.teacher.model),
        divergence=instantiate(cfg.divergence),
        temperature=3.0,
        optimizer=None,
    )
    assert task.temperature == 1.0 and task.kd_scale == 1.0
    plain = DistillTask(
        model=student,
        teacher=instantiate(cfg.teacher.model),
        divergence=instantiate(compose_cfg("divergence=forward_kl").divergence),
        temperature=3.0,
        optimizer=None,
    )
    assert plain.temperature == 3.0 and plain.kd_scale == 9.0
