"""rlvr.split (DPH-RL's D_pef / D_exp split) end to end on a tiny GPT: the split is sampled once from the start and
cached, the RL groups are drawn from D_exp problems only, the divergence sees only correct start samples of D_pef
problems, train/pef_fraction is logged; without the key the run hash and the rehearsal file are the ones the
finished dphrl_arith cells were run under."""

import re
import textwrap

import pytest
import torch
from rlvr_tiny import TINY

from divlab.runner import run
from divlab.tasks.rlvr_rollout import problem_texts
from divlab.utils.hashing import run_config_hash


@pytest.fixture
def digit_reward(tmp_path, monkeypatch):
    """A reward that makes the split known whatever the (barely trained) start samples: an ended completion is
    right exactly when the prompt's first operand is even, so D_pef holds only even-operand problems (those whose
    k samples all ended) and every odd-operand problem is in D_exp."""
    (tmp_path / "split_rewards.py").write_text(
        textwrap.dedent(
            """
            import re

            def even_first(prompt, completion, answer):
                return float(int(re.match(r"\\d+", prompt).group()) % 2 == 0)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "split_rewards:even_first"


def test_split_rl_on_d_exp_divergence_on_d_pef(compose_cfg, outputs, monkeypatch, digit_reward):
    from divlab.tasks import rlvr, rlvr_split

    seen, rl_prompts, splits = {}, [], []
    sample, split = rlvr.sample_completions, rlvr_split.sample_split

    def spy_sample(model, tokens, prompt_len, **kw):  # rlvr's own binding: only sample_groups calls it
        rl_prompts.append([tuple(row[:p]) for row, p in zip(tokens.tolist(), prompt_len.tolist())])
        return sample(model, tokens, prompt_len, **kw)

    def spy_split(*args, **kw):
        splits.append(kw["samples"])
        return split(*args, **kw)

    def remember(self, batch, batch_idx, _step=rlvr.RLVRTask.training_step):
        seen["task"] = self
        return _step(self, batch, batch_idx)

    monkeypatch.setattr(rlvr, "sample_completions", spy_sample)
    monkeypatch.setattr(rlvr_split, "sample_split", spy_split)
    monkeypatch.setattr(rlvr, "sample_split", spy_split)
    monkeypatch.setattr(rlvr.RLVRTask, "training_step", remember)
    overrides = [*TINY, "rlvr.divergence=forward_kl", "rlvr.beta=0.2", f"rlvr.reward={digit_reward}"]
    record = run(compose_cfg(*overrides, "+rlvr.split.samples=4", "+rlvr.split.pef_threshold=1.0"))
    task = seen["task"]
    pool = task.training_prompts()
    (cached,) = (outputs / "rehearsal").glob("*.pt")
    data = torch.load(cached, weights_only=True)
    pef = data["pef"]
    assert splits == [4] and len(pef) == len(pool["answers"])
    assert 0 < int(pef.sum()) < len(pef)  # both sets non-empty at this seed
    assert torch.equal(data["pass_rate"] >= 1.0, pef)
    even = torch.tensor([int(re.match(r"\d+", q).group()) % 2 == 0 for q in pool["prompts"]])
    assert not (pef & ~even).any()  # an odd-operand problem (reward 0 on every sample) is never in D_pef
    assert record["metrics"]["train/pef_fraction"] == pytest.approx(float(pef.float().mean()))
    assert torch.equal(task.exp_idx, torch.nonzero(~pef, as_tuple=True)[0])

    prompt_rows = [tuple(r[:p]) for r, p in zip(pool["tokens"].tolist(), pool["prompt_len"].tolist())]
    exp_rows = {prompt_rows[i] for i in task.exp_idx.tolist()}
    pef_rows = {prompt_rows[i] for i in torch.nonzero(pef).flatten().tolist()}
    assert rl_prompts and all(row in exp_rows for call in rl_prompts for row in call)  # RL: D_exp only

    # the divergence's rows: correct start samples of D_pef problems only, and as many as were correct
    rh = task.rehearsal
    assert torch.equal(rh["tokens"], data["tokens"]) and len(rh["length"]) > 0
    assert len(rh["length"]) == int(4 * pef.sum())  # threshold 1.0: every sample of a D_pef problem is right
    answers = dict(zip(prompt_rows, pool["answers"]))
    assert all(tuple(row[:p]) in pef_rows for row, p in zip(rh["tokens"].tolist(), rh["prompt_len"].tolist()))
    prompts, completions = problem_texts(rh["tokens"], rh["prompt_len"], rh["length"], task.tokenizer)
    for row, p, prompt, completion in zip(
        rh["tokens"].tolist(), rh["prompt_len"].tolist(), prompts, completions
    ):
        assert task.reward(prompt, completion, answers[tuple(row[:p])]) > 0
    assert record["metrics"]["train/divergence"] >= 0


def test_no_split_keeps_the_run_hash_and_rehearsal_file(compose_cfg):
    """Pinned: the hash and rehearsal file of `experiment=rlvr/arith_table` (seed 0) before rlvr.split existed, the
    directories the finished dphrl_arith cells live in. If a deliberate change to that experiment moves them, the
    table's cells rerun: update the pins with the change."""
    from divlab.tasks.rlvr import rehearsal_path

    cfg = compose_cfg("experiment=rlvr/arith_table", fast=False)
    assert "split" not in cfg.rlvr
    assert run_config_hash(cfg) == "4a623edc54"
    assert rehearsal_path(cfg).name == "1c04c6af42.pt"
    with_split = compose_cfg("experiment=rlvr/arith_table", "+rlvr.split.pef_threshold=1.0", fast=False)
    assert run_config_hash(with_split) != "4a623edc54"
    assert rehearsal_path(with_split).name != "1c04c6af42.pt"
