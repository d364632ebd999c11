"""Short `lm` and `seqmatch` runs through the CLI and the runner: arithmetic, a text file, DDP."""

import ast
import json
from pathlib import Path

import pytest
import torch

from divlab.errors import ConfigError
from divlab.runner import run

ARITH_FAST = [
    "data.datamodule.n_train=300",
    "data.datamodule.n_val=40",
    "data.datamodule.n_test=40",
    "data.datamodule.batch_size=32",
]
SM_FAST = [*ARITH_FAST, "seqmatch.init_train.max_epochs=1"]  # a one-epoch behaviour-cloning start


def test_lm_arith_from_the_command_line(run_cli, outputs):
    result = run_cli("experiment=lm/arith", "debug=fast", "seed=1", "lm.sample_tokens=12", *ARITH_FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = outputs.glob("lm/lm/arith/*/seed1/metrics.json")
    metrics = json.loads(path.read_text())["metrics"]
    for key in (
        "val/loss",
        "val/ppl",
        "val/acc_clean",
        "test/loss",
        "test/ppl",
        "test/acc_clean",
        "test/acc_ood",
        "test/bs_rate",
        "best/test/loss",
    ):
        assert key in metrics, key
    assert metrics["test/ppl"] == pytest.approx(2.718281828 ** metrics["test/loss"], rel=1e-5)
    assert 0 <= metrics["test/acc_clean"] <= 1 and 0 <= metrics["test/bs_rate"] <= 1
    assert (path.parent / "samples.txt").read_text().count("--- sample") == 4
    assert f"run_dir: {path.parent}" in result.stdout


def test_seqmatch_arith_run(compose_cfg):
    cfg = compose_cfg(
        "experiment=seqmatch/arith",
        "divergence=chi2_mixture",
        "seqmatch.bc_epochs=0",
        "seqmatch.rollout_every=2",
        "seqmatch.rollout_batch=8",
        "seqmatch.p_noise=0.3",
        *SM_FAST,
    )
    record = run(cfg)
    m = record["metrics"]
    for key in ("train/sm", "train/nll", "train/bs_rate", "train/sm_psi", "test/acc_ood", "test/bs_rate_ood"):
        assert key in m, key
    assert all(v == v for v in m.values())  # no NaN
    assert record["task"] == "seqmatch" and "/seqmatch/seqmatch/arith/" in record["run_dir"]


def test_seqmatch_starts_from_the_cached_behaviour_cloning_model(compose_cfg, tmp_path):
    from divlab.tasks.seqmatch import build
    from divlab.utils.checks import build as build_spec

    fast = [*SM_FAST, f"paths.teacher_dir={tmp_path / 'bc'}"]  # a cache of its own: counts its files
    cfg = compose_cfg("experiment=seqmatch/arith", *fast)
    datamodule = build_spec(cfg.data.datamodule, seed=0)
    torch.use_deterministic_algorithms(False)  # torch's default (an earlier test may have set it)
    task = build(cfg, datamodule=datamodule)
    assert (
        not torch.are_deterministic_algorithms_enabled()
    )  # the BC Trainer's deterministic=True is not left behind
    (cached,) = Path(cfg.paths.teacher_dir).glob("*.ckpt")
    state = torch.load(cached, map_location="cpu", weights_only=True)["state_dict"]
    assert state.keys() == task.model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in task.model.state_dict().items())
    assert task.model.training and all(p.requires_grad for p in task.model.parameters())  # trainable again
    stamp = cached.stat().st_mtime_ns
    build(cfg, datamodule=datamodule)  # a second run reads the cache
    assert cached.stat().st_mtime_ns == stamp
    build(compose_cfg("experiment=seqmatch/arith", "seed=1", *fast), datamodule=datamodule)
    assert len(list(Path(cfg.paths.teacher_dir).glob("*.ckpt"))) == 2  # one behaviour-cloning model per seed
    fresh = build(
        compose_cfg("experiment=seqmatch/arith", "seqmatch.init=null", *fast), datamodule=datamodule
    )
    assert not torch.equal(fresh.model.state_dict()["lm_head.weight"], state["lm_head.weight"])
    with pytest.raises(ConfigError, match=r"seqmatch.init=/no/such.ckpt does not exist"):
        build(
            compose_cfg("experiment=seqmatch/arith", "seqmatch.init=/no/such.ckpt", *fast),
            datamodule=datamodule,
        )


def test_lm_on_a_text_file(compose_cfg, tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("".join(f"{i}: the quick brown fox jumps over the lazy dog\n" for i in range(300)))
    cfg = compose_cfg(
        "task=lm",
        "data=shakespeare",
        f"data.path={text}",
        "student=gpt_tiny",
        "data.datamodule.block_size=32",
        "lm.sample_tokens=20",
    )
    record = run(cfg)
    assert record["metrics"]["test/ppl"] > 1 and "test/acc_clean" not in record["metrics"]
    samples = (Path(record["run_dir"]) / "samples.txt").read_text().splitlines()
    prompts = [
        ast.literal_eval(line.split(", prompt ", 1)[1]) for line in samples if line.startswith("--- sample")
    ]
    assert len(prompts) == 4 and all(p in text.read_text() for p in prompts)  # prompts come from the text


def test_seqmatch_refuses_a_divergence_without_a_regulariser(compose_cfg):
    cfg = compose_cfg("experiment=seqmatch/arith", "divergence=total_variation", *SM_FAST)
    with pytest.raises(ConfigError, match="no SequenceMatch regulariser"):
        run(cfg)


@pytest.mark.slow
def test_seqmatch_ddp_sim(run_cli, outputs):
    """Two CPU processes (ddp_spawn, gloo): rollouts per rank, metrics all-reduced."""
    result = run_cli(
        "experiment=seqmatch/arith",
        "trainer=ddp_sim",
        "debug=fast",
        "seqmatch.bc_epochs=0",
        "seqmatch.rollout_every=1",
        "seqmatch.rollout_batch=8",
        *SM_FAST,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = outputs.glob("seqmatch/seqmatch/arith/*/seed0/metrics.json")
    record = json.loads(path.read_text())
    assert (
        record["world_size"] == 2
        and "test/acc_ood" in record["metrics"]
        and "train/bs_rate" in record["metrics"]
    )
