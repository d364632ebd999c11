"""DPH-RL's D_pef / D_exp split (divlab.tasks.rlvr_split) on hand-built start samples: a problem whose samples are
all correct is in D_pef, one with a wrong sample is in D_exp (at pef_threshold 1.0), and the rehearsal rows are
exactly the correct samples of D_pef problems."""

import pytest
import torch

from divlab.errors import ConfigError
from divlab.objectives.lm import action_mask
from divlab.tasks import rlvr_split
from divlab.tasks.rlvr_rollout import Completions, exact_match
from divlab.tasks.rlvr_split import check_split, check_split_sets, sample_split, split_problems


def test_check_split_defaults_and_bad_values():
    assert check_split(None) is None
    assert check_split({}) == {"samples": 8, "pef_threshold": 1.0}
    assert check_split({"pef_threshold": 0.5, "samples": 4}) == {"samples": 4, "pef_threshold": 0.5}
    with pytest.raises(ConfigError, match=r"rlvr\.split\.threshold is not a setting"):
        check_split({"threshold": 1.0})
    with pytest.raises(ConfigError, match=r"rlvr\.split\.pef_threshold must be a number in \(0, 1\]"):
        check_split({"pef_threshold": 0})
    with pytest.raises(ConfigError, match=r"rlvr\.split\.samples must be an integer >= 1"):
        check_split({"samples": 0})
    with pytest.raises(ConfigError, match=r"rlvr\.split must be a mapping"):
        check_split(1.0)


def test_split_problems_by_pass_rate():
    correct = torch.tensor(
        [[True, True, True, True], [True, True, True, False], [False, False, False, False]]
    )
    assert split_problems(correct, 1.0).tolist() == [True, False, False]  # any wrong sample: D_exp
    assert split_problems(correct, 0.75).tolist() == [True, True, False]
    assert split_problems(correct, 0.25).tolist() == [True, True, False]  # 0 of 4 never reaches D_pef


class _Tok:
    pad_id, bos_id, bs_id, eos_id = 0, 1, None, 2


def _pool_and_samples():
    """3 problems x k = 2 start samples: problem 0 right twice, problem 1 right once, problem 2 never."""
    pool = {
        "tokens": torch.zeros(3, 3, dtype=torch.long),
        "prompt_len": torch.full((3,), 2),
        "prompts": ["1+2=", "2+2=", "3+3="],
        "answers": ["3", "4", "6"],
    }
    texts = ["3", "3", "4", "5", "7", "8"]
    tokens = torch.tensor([[1, 5, 10 + i, 2] for i in range(6)])  # row i's completion token is 10 + i
    plen, length = torch.full((6,), 2), torch.full((6,), 4)
    done = Completions(
        tokens=tokens,
        prompt_len=plen,
        length=length,
        mask=action_mask(tokens.shape, prompt_len=plen, length=length),
        ended=torch.ones(6, dtype=torch.bool),
        texts=texts,
    )
    return pool, done


@pytest.mark.parametrize(
    ("threshold", "pef", "rows"),
    [(1.0, [True, False, False], [0, 1]), (0.5, [True, True, False], [0, 1, 2])],
)
def test_sample_split_keeps_the_correct_samples_of_d_pef(monkeypatch, threshold, pef, rows):
    pool, done = _pool_and_samples()
    calls = {}

    def fake_sample(model, tokens, prompt_len, *, n, **kw):
        calls["n"], calls["prompts"] = n, len(tokens)
        return done

    def fake_logps(model, tokens, mask, **kw):
        return torch.where(mask, tokens[:, 1:].float() * -0.01, torch.zeros_like(mask, dtype=torch.float))

    monkeypatch.setattr(rlvr_split, "sample_completions", fake_sample)
    monkeypatch.setattr(rlvr_split, "token_logps", fake_logps)
    out = sample_split(
        None,
        pool,
        samples=2,
        pef_threshold=threshold,
        reward=exact_match,
        reward_name="exact_match",
        tokenizer=_Tok(),
        temperature=1.0,
        max_new_tokens=2,
        never=(0, 1),
        generator=torch.Generator(),
        device="cpu",
    )
    assert calls == {"n": 2, "prompts": 3}  # every problem sampled k times, once
    assert out["pef"].tolist() == pef
    assert out["pass_rate"].tolist() == [1.0, 0.5, 0.0]
    assert torch.equal(out["tokens"], done.tokens[rows])  # the divergence sees these rows only
    assert [int(t) - 10 for t in out["tokens"][:, 2]] == rows
    assert torch.equal(out["ref_logp"], fake_logps(None, done.tokens[rows], done.mask[rows]))
    check_split_sets(out, threshold, True, "forward_kl")  # both sets non-empty: no error


def test_check_split_sets_refuses_an_empty_set():
    with pytest.raises(ConfigError, match=r"D_exp \(the RL prompts\) is empty"):
        check_split_sets({"pef": torch.ones(3, dtype=torch.bool), "length": torch.ones(3)}, 1.0, True, "js")
    empty = {"pef": torch.zeros(3, dtype=torch.bool), "length": torch.zeros(0)}
    with pytest.raises(ConfigError, match=r"D_pef has no rehearsal sample for rlvr\.divergence=js"):
        check_split_sets(empty, 1.0, True, "js")
    check_split_sets(empty, 1.0, False, "none")  # no rehearsal divergence: an empty D_pef is allowed
