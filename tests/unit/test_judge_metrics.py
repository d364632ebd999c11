"""The judge's scores of continuations (NLL, features) and their wiring into the text report."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from divlab.metrics.judge import judge_scores, text_report
from divlab.models import GPT

VOCAB, PAD = 12, 11


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    return (
        GPT(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=16, context_length=64).eval().requires_grad_(False)
    )


def rows(n: int, *, low: int, high: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, length), generator=g).tolist()


def test_scores_equal_one_row_at_a_time(judge):
    """Rows of different lengths padded into one batch score as each row alone (causal, padding unscored)."""
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    conts = [[1, 1, 2, 5], [3], [9, 8, 7]]
    batch = judge_scores(judge, prompts, conts, pad_id=PAD)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        x = torch.tensor([p + c])
        logits, hidden = judge(x, return_hidden=True)
        logp = F.log_softmax(logits[0, :-1].double(), -1)
        nll = -sum(float(logp[t - 1, x[0, t]]) for t in range(len(p), len(p) + len(c)))
        assert batch.nll[i] == pytest.approx(nll, rel=1e-5)
        assert batch.n_tokens[i] == len(c)
        np.testing.assert_allclose(
            batch.features[i], hidden[0, len(p) :].double().mean(0).numpy(), rtol=1e-5, atol=1e-6
        )
    assert batch.ppl() == pytest.approx(math.exp(batch.nll.sum() / batch.n_tokens.sum()))


def test_report_with_a_judge_real_against_itself_and_against_a_collapsed_generator(judge):
    prompts = rows(60, low=0, high=10, length=6, seed=1)
    real = rows(60, low=0, high=10, length=12, seed=2)
    same = text_report(prompts, real, real, judge=judge, pad_id=PAD, mauve_clusters=6)
    assert same["mauve"] == pytest.approx(1.0, abs=1e-9)
    assert same["judge_ppl"] == pytest.approx(same["judge_ppl_real"])
    assert same["distinct_2"] == pytest.approx(same["distinct_2_real"])
    collapsed = [[10] * 12 for _ in prompts]  # one token, never in the real continuations
    far = text_report(prompts, collapsed, real, judge=judge, pad_id=PAD, mauve_clusters=6)
    assert far["mauve"] < 0.1 < same["mauve"]
    assert far["repetition_4"] == pytest.approx(1 - 1 / 9) and far["distinct_2"] < same["distinct_2"]


def test_report_without_a_judge_has_no_judge_metrics():
    out = text_report([[1, 2]], [[3, 4, 5, 6, 3, 4, 5, 6]], [[1, 2, 3, 4, 5]], judge=None, pad_id=PAD)
    assert set(out) == {"distinct_2", "distinct_3", "repetition_4", "distinct_2_real", "repetition_4_real"}
    assert out["repetition_4"] == pytest.approx(1 / 5)
