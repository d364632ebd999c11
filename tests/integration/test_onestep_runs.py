"""Short denoise / one_step / sample_teacher runs: configs, diffusion-teacher caching, step counting,
metrics and figures; DDP (slow)."""

import json
from pathlib import Path

import pytest
import torch

from divlab.runner import run
from divlab.utils.hashing import teacher_hash

SMALL = [
    "data.datamodule.n_train=512",
    "data.datamodule.n_val=128",
    "data.datamodule.n_test=128",
    "data.datamodule.batch_size=64",
    "student.model.width=32",
    "student.model.depth=1",
]
SMALL_TEACHER = [
    "teacher.model.width=32",
    "teacher.model.depth=1",
    "teacher.train.max_epochs=1",
    "teacher.train.eval_samples=128",
]


def test_one_step_steps_change_the_generator_and_count_both_optimisers(compose_cfg, generator_at_fit_start):
    seen = generator_at_fit_start
    cfg = compose_cfg(
        "experiment=onestep/ring8_js",
        "teacher=edm_gmm_exact",
        "one_step.critic_steps=2",
        "one_step.gan_weight=0.1",
        "one_step.eval_samples=128",
        "one_step.teacher_sample_steps=2",
        *SMALL,
    )
    record = run(cfg)
    task = seen["task"]
    after = task.generator.state_dict()
    assert any(not torch.equal(seen["before"][k], after[k]) for k in after), "the generator did not move"
    assert int(task.generator_steps) == 3  # debug=fast: 3 batches
    assert record["global_step"] == 3 * (2 + 1)  # Lightning counts every optimiser step
    m = record["metrics"]
    for key in (
        "test/coverage",
        "test/recall",
        "test/precision",
        "test/sliced_w",
        "test/mmd",
        "test/energy",
        "test/hq",
        "test/mode_tv",
        "test/nfe",
        "test/sec_per_1k",
        "val/sliced_w",
        "train/generator_steps",
    ):
        assert key in m, key
    assert m["test/nfe"] == 1.0 and 0 <= m["test/coverage"] <= 1
    assert (Path(record["run_dir"]) / "samples.png").is_file()


def test_denoise_teacher_is_trained_once_cached_and_sampled(compose_cfg, teacher_dir, capsys):
    overrides = [
        "task=sample_teacher",
        "data=ring8",
        "teacher=edm_mlp2d",
        "sample.method=heun",
        "sample.num_steps=2",
        "sample.eval_samples=128",
        *SMALL[:4],
        *SMALL_TEACHER,
    ]
    cfg = compose_cfg(*overrides)
    path = teacher_dir / f"{teacher_hash(cfg)}.ckpt"
    record = run(cfg)
    assert path.is_file(), "the diffusion teacher was not cached"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["divlab"]["kind"] == "teacher" and ckpt["divlab"]["sigma_data"] == pytest.approx(1.418)
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    assert record["metrics"]["test/nfe"] == 3.0 and record["global_step"] == 0  # sampling only
    assert (Path(record["run_dir"]) / "samples.png").is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert "test/loss" in sidecar["metrics"]
    # a KD teacher's hash has no train.task key, so adding the key to diffusion teachers changed no KD hash
    kd = compose_cfg("experiment=kd/digits")
    assert "task" not in kd.teacher.train


def test_denoise_task_run(compose_cfg):
    record = run(
        compose_cfg(
            "task=denoise",
            "data=moons",
            "student=edm_mlp2d",
            "denoise.eval_samples=128",
            "denoise.sample_steps=2",
            *SMALL,
        )
    )
    m = record["metrics"]
    assert m["val/loss"] > 0 and "test/recall" in m and m["test/nfe"] == 3.0
    assert "test/coverage" not in m  # moons is not a mixture


@pytest.mark.slow
def test_one_step_runs_under_ddp(compose_cfg):
    cfg = compose_cfg(
        "experiment=onestep/ring8_js",
        "teacher=edm_gmm_exact",
        "trainer=ddp_sim",
        "trainer.strategy=ddp_spawn_find_unused_parameters_true",
        "trainer.limit_train_batches=2",
        "one_step.critic_steps=1",
        "one_step.eval_samples=128",
        "one_step.teacher_sample_steps=2",
        *SMALL,
    )
    record = run(cfg)
    assert record["world_size"] == 2
    assert record["global_step"] == 4  # (K + 1) x 2 generator steps, read back from last.ckpt
    assert record["metrics"]["train/generator_steps"] == 2 and "test/sliced_w" in record["metrics"]


def test_one_step_under_plain_ddp_names_the_strategy(compose_cfg):
    from divlab.errors import ConfigError
    from divlab.tasks.one_step import build

    cfg = compose_cfg("experiment=onestep/ring8_js", "teacher=edm_gmm_exact", "trainer=ddp_sim")
    with pytest.raises(ConfigError, match="trainer.strategy=ddp_spawn_find_unused_parameters_true"):
        build(cfg)
