"""task=rlvr end to end on a tiny GPT: the CLI with DPH-RL's forward KL writes pass@k and forgetting metrics and
caches the rehearsal set; a second run reads it (the sampler is not called) and starts from the cached start
model, which is also its frozen reference; bad input fails before training, one sentence each."""

import json
import math
import textwrap

import pytest
import torch
from rlvr_tiny import TINY

from divlab.errors import ConfigError
from divlab.runner import run


def test_cli_forward_kl_run_writes_pass_at_k_and_reuses_its_rehearsal_set(
    run_cli, compose_cfg, outputs, monkeypatch, reward_module
):
    proc = run_cli(*TINY, "rlvr.divergence=forward_kl", "rlvr.beta=0.05", "debug=fast")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (outputs / "rlvr").rglob("metrics.json")
    m = json.loads(path.read_text())["metrics"]
    for key in ("train/loss", "train/reward", "train/divergence", "test/other_pass_at_1", "test/forgetting"):
        assert key in m and math.isfinite(m[key]), key
    passes = [m[f"test/pass_at_{k}"] for k in (1, 4, 8)]
    starts = [m[f"test/start_pass_at_{k}"] for k in (1, 4, 8)]
    for values in (passes, starts):
        assert all(0 <= v <= 1 for v in values) and values == sorted(values)  # pass@k grows with k
    assert m["test/forgetting"] == pytest.approx(m["test/start_other_pass_at_1"] - m["test/other_pass_at_1"])
    assert m["train/divergence"] >= 0
    (cached,) = (outputs / "rehearsal").glob("*.pt")
    data = torch.load(cached, weights_only=True)
    assert data["tokens"].shape[0] == 12 and (data["ref_logp"] <= 0).all()
    assert (data["ref_logp"].sum(dim=1) < 0).all()  # every completion has scored tokens under pi_ref

    # a second run (another beta: another run directory, the same rehearsal set) must read the file
    from divlab.tasks import rlvr

    def refuse(self):
        raise AssertionError("the rehearsal set was sampled again")

    seen = {}
    original = rlvr.RLVRTask.on_fit_start

    def remember(self):
        original(self)
        seen["task"] = self
        seen["start"] = {k: v.clone() for k, v in self.model.state_dict().items()}

    monkeypatch.setattr(rlvr.RLVRTask, "sample_rehearsal", refuse)
    monkeypatch.setattr(rlvr.RLVRTask, "on_fit_start", remember)
    # a reward with signal at a 1-epoch start (longer completions score more), so the policy must move
    record = run(
        compose_cfg(*TINY, "rlvr.divergence=forward_kl", "rlvr.beta=0.2", "rlvr.reward=my_rewards:length")
    )
    assert record["metrics"]["train/reward"] > 0
    task = seen["task"]
    assert torch.equal(task.rehearsal["tokens"], data["tokens"])
    reference = task.reference.state_dict()
    assert all(
        torch.equal(v.cpu(), reference[k].cpu()) for k, v in seen["start"].items()
    )  # reference = start
    assert not any(p.requires_grad for p in task.reference.parameters())
    assert not any(k.startswith("reference") for k in task.state_dict())
    assert any(
        not torch.equal(v, task.model.state_dict()[k]) for k, v in seen["start"].items()
    )  # RL moved it
    assert len(list((outputs / "rehearsal").glob("*.pt"))) == 1


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            def words(prompt, completion, answer):
                return "yes"

            def length(prompt, completion, answer):
                return float(len(completion))

            def score(prompt, completion, answer):
                return float(completion == answer)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["rlvr.group_size=1"], r"rlvr\.group_size must be an integer >= 2"),
        (["rlvr.beta=-0.1"], r"rlvr\.beta must be a finite number >= 0"),
        (["rlvr.divergence=kl"], r"rlvr\.divergence='kl' is not known"),
        (
            ["rlvr.reward=no_such_module_xyz:score"],
            r"rlvr\.reward=no_such_module_xyz:score cannot be imported",
        ),
        (["rlvr.reward=my_rewards:nothing"], r"rlvr\.reward=my_rewards:nothing cannot be imported"),
        (["rlvr.reward=my_rewards:words"], r"rlvr\.reward=my_rewards:words returned 'yes' \(str\)"),
        (["rlvr.pass_k=[1,64]"], r"rlvr\.pass_k has k=64"),
        (["rlvr.train_ops=x"], r"rlvr\.train_ops=.x. must be a non-empty subset"),
    ],
)
def test_bad_input_fails_before_training(compose_cfg, reward_module, overrides, match, monkeypatch):
    from divlab.tasks import rlvr

    def never(self, stage):
        raise AssertionError("the start model was provisioned before the bad input was refused")

    monkeypatch.setattr(rlvr.RLVRTask, "setup", never)
    with pytest.raises(ConfigError, match=match):
        run(compose_cfg(*TINY, *overrides))


def test_a_user_reward_function_is_used(compose_cfg, reward_module):
    cfg = compose_cfg(*TINY, "rlvr.reward=my_rewards:score")
    from divlab.tasks.rlvr import build
    from divlab.utils.checks import build as build_spec

    task = build(cfg, datamodule=build_spec(cfg.data.datamodule, seed=0))
    assert task.reward("1+2=", "3", "3") == 1.0 and task.reward("1+2=", "4", "3") == 0.0


def test_task_fit_false_evaluates_the_start_without_rl(compose_cfg, reward_module, monkeypatch):
    """task.fit=false (the start row of table dphrl_arith): the start policy is provisioned and tested, no RL step
    runs, so the policy's pass@k is the start's and nothing is forgotten."""
    from divlab.tasks import rlvr

    def refuse(self, batch, batch_idx):
        raise AssertionError("an RL step ran under task.fit=false")

    monkeypatch.setattr(rlvr.RLVRTask, "training_step", refuse)
    # the length reward scores any non-empty completion, so even the 1-epoch start has pass@k > 0
    record = run(
        compose_cfg(*TINY, "rlvr.divergence=forward_kl", "task.fit=false", "rlvr.reward=my_rewards:length")
    )
    m = record["metrics"]
    assert record["global_step"] == 0
    for key in ("pass_at_1", "pass_at_8", "other_pass_at_1"):
        assert m[f"test/{key}"] == pytest.approx(m[f"test/start_{key}"]), key
    assert m["test/forgetting"] == pytest.approx(0.0)
    assert 0 < m["test/pass_at_8"] <= 1  # a real evaluation ran
    assert not any(k.startswith("train/") for k in m)
