"""task=superpose through the runner: short SuperDiff runs on grid25 with exact and with (barely) trained
part models, and its bad-input messages."""

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from divlab.errors import ConfigError


def run_dir_of(proc) -> Path:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1].split("run_dir: ", 1)[1])


def test_superpose_or_covers_both_and_and_keeps_to_the_shared_modes(run_cli):
    proc = run_cli(
        "experiment=superdiff/grid_shared",
        "superpose.samplers=[or,and]",
        "superpose.num_samples=400",
        "superpose.num_steps=60",
    )
    run_dir = run_dir_of(proc)
    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert m["test/or/cov1"] >= 0.8 and m["test/or/cov2"] >= 0.8  # OR: modes of both models
    assert m["test/and/cov1"] < 0.5 and m["test/and/cov2"] < 0.5  # AND: only the shared third
    assert m["test/and/near_shared"] > 0.8 > m["test/or/near_shared"]
    assert m["test/and/frac_both_high"] > 0.8 > m["test/or/frac_both_high"]
    assert m["test/and/dlogq_abs_mean"] < 0.5 < m["test/or/dlogq_abs_mean"]
    assert "test/cov1" not in m  # two samplers: prefixed keys only
    for name in ("samples.png", "dlogq_hist.png", "samples.pt"):
        assert (run_dir / name).stat().st_size > 0
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


@pytest.mark.slow  # ~37 s under load (16 s CPU): trains two tiny teachers, then samples
def test_superpose_with_trained_part_teachers(run_cli, teacher_dir):
    """teacher=edm_mlp2d: one denoiser per part, trained by task=denoise and cached under its own hash."""
    proc = run_cli(
        "experiment=superdiff/grid_shared",
        "teacher=edm_mlp2d",
        "teacher.train.max_epochs=1",
        "+teacher.train.eval_samples=64",
        "+teacher.train.sample_steps=2",
        "data.datamodule.n_train=1024",
        "data.datamodule.n_val=256",
        "data.datamodule.n_test=256",
        "superpose.samplers=[and]",
        "superpose.num_samples=100",
        "superpose.num_steps=20",
    )
    run_dir = run_dir_of(proc)
    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert 0.0 <= m["test/cov1"] <= 1.0 and m["test/nfe"] == 40.0  # one sampler: unprefixed keys too
    assert len(list(Path(teacher_dir).glob("*.ckpt"))) >= 2  # one cached teacher per part


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=digits"], "Gaussian-mixture data set"),
        (["teacher=digits_cnn"], "diffusion teacher"),
        (["superpose.parts=[[0,1],[0,1]]"], "parts are equal"),
        (["superpose.parts=[[0,99],[1]]"], r"superpose.parts\[0\]"),
        (["superpose.samplers=[xor]"], "superpose.samplers"),
        (["superpose.hdr_mass=1.5"], "hdr_mass"),
        (["superpose.or_weights=[1.0,0.0]"], "or_weights"),
    ],
)
def test_superpose_bad_input(compose_cfg, overrides, message):
    from divlab.tasks.superpose import build
    from divlab.utils.hashing import prune_unused

    cfg = prune_unused(compose_cfg("experiment=superdiff/grid_shared", *overrides))
    with pytest.raises(ConfigError, match=message):
        build(cfg, datamodule=instantiate(cfg.data.datamodule, seed=0))
