"""GRPO by hand on a 2-sample group (advantages, clipping, gradients), the k3 and rehearsal estimators by hand and
by exact expectation, pass@k against the closed form and brute-force enumeration, the rehearsal cache."""

import itertools
import math

import pytest
import torch

from divlab.divergences import get_divergence
from divlab.errors import ConfigError
from divlab.metrics.pass_at_k import mean_pass_at_k, pass_at_k
from divlab.objectives.grpo import (
    GRPOLoss,
    clipped_surrogate,
    group_advantages,
    policy_sample_term,
    rehearsal_term,
)
from divlab.tasks.rlvr_rollout import load_or_sample_rehearsal

EPS = 1e-4


def test_advantages_of_a_two_sample_group_by_hand():
    # r = (1, 0): mean 1/2, unbiased std sqrt(((1/2)^2 + (1/2)^2) / 1) = sqrt(1/2)
    a = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), 2)
    half = 0.5 / (math.sqrt(0.5) + EPS)
    assert a.tolist() == pytest.approx([half, -half, 0.0, 0.0], abs=1e-6)  # an all-equal group has A = 0


def test_clipping_and_its_gradient_by_hand():
    a = torch.tensor([1.0, -1.0])
    old = torch.log(torch.tensor([[0.4], [0.4]]))
    # sample 0: ratio 1.5, A > 0 -> clipped at 1.2, no gradient; sample 1: ratio 1.5, A < 0 -> min is 1.5 A
    logp = torch.log(torch.tensor([[0.6], [0.6]])).requires_grad_(True)
    surrogate, clipped = clipped_surrogate(logp, old, a, clip=0.2)
    assert surrogate.flatten().tolist() == pytest.approx([1.2, -1.5])
    assert clipped.flatten().tolist() == [True, False]
    loss = GRPOLoss(clip=0.2, beta=0.0, divergence="none")
    terms = loss(logp=logp, old_logp=old, advantages=a, mask=torch.ones(2, 1, dtype=torch.bool))
    assert terms["loss"].item() == pytest.approx(-(1.2 - 1.5) / 2)
    assert terms["clip_fraction"].item() == pytest.approx(0.5)
    terms["loss"].backward()
    # d/dlogp of -(1/2) ratio A = -(1/2) ratio A: 0 for the clipped sample, -(1/2)(1.5)(-1) = 0.75 for the other
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.75])


def test_ratio_one_gives_the_policy_gradient_and_masks_tokens():
    a = torch.tensor([2.0, -2.0])
    logp = torch.log(torch.tensor([[0.5, 0.3], [0.2, 0.9]])).requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False]])  # row 1 has one token: its 1/|o| is 1
    terms = GRPOLoss(divergence="none")(logp=logp, old_logp=logp.detach(), advantages=a, mask=mask)
    terms["loss"].backward()
    # J = (1/2)[(1/2)(A0 + A0) + A1] at ratio 1; dJ/dlogp_t = (1/2)(1/|o_i|) A_i on real tokens
    assert terms["loss"].item() == pytest.approx(-0.5 * (2.0 - 2.0))
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 1.0, 0.0])


def test_k3_by_hand_and_in_the_loss():
    logp, ref = torch.log(torch.tensor([[0.25]])), torch.log(torch.tensor([[0.5]]))
    # r = pi_ref / pi_theta = 2: r - log r - 1
    k3 = 2 - math.log(2) - 1
    assert policy_sample_term(get_divergence("reverse_kl"), logp, ref).item() == pytest.approx(k3)
    loss = GRPOLoss(beta=0.1, divergence="reverse_kl")
    terms = loss(
        logp=logp,
        old_logp=logp,
        advantages=torch.zeros(1),
        mask=torch.ones(1, 1, dtype=torch.bool),
        ref_logp=ref,
    )
    assert terms["divergence"].item() == pytest.approx(k3)
    assert terms["loss"].item() == pytest.approx(0.1 * k3)


def test_k3_and_rehearsal_terms_are_unbiased_for_their_divergences():
    g = torch.Generator().manual_seed(0)
    lq = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)  # pi_theta
    lp = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)  # pi_ref
    q, p = lq.exp(), lp.exp()
    reverse = (q * (lq - lp)).sum()  # KL(pi_theta || pi_ref)
    forward = (p * (lp - lq)).sum()  # KL(pi_ref || pi_theta)
    m = (p + q) / 2
    js = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    # exact expectations: policy samples weighted by pi_theta, rehearsal samples by pi_ref
    k3 = (q * policy_sample_term(get_divergence("reverse_kl"), lq, lp)).sum()
    fkl = (p * rehearsal_term(get_divergence("forward_kl"), lq, lp)).sum()
    jsr = (p * rehearsal_term(get_divergence("js"), lq, lp)).sum()
    assert k3.item() == pytest.approx(reverse.item(), rel=1e-9)
    assert fkl.item() == pytest.approx(forward.item(), rel=1e-9)
    assert jsr.item() == pytest.approx(js.item(), rel=1e-9)
    # pointwise: the generator forms are >= 0, and the forward one is u - log u - 1 (u = pi_theta / pi_ref)
    u = (lq - lp).exp()
    assert torch.allclose(rehearsal_term(get_divergence("forward_kl"), lq, lp), u - u.log() - 1)
    assert (rehearsal_term(get_divergence("js"), lq, lp) >= -1e-12).all()


def test_rehearsal_term_in_the_loss_pulls_towards_the_reference():
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    logp = torch.log(torch.tensor([[0.25, 0.5]])).requires_grad_(True)
    loss = GRPOLoss(beta=1.0, divergence="forward_kl")
    mask = torch.ones(1, 2, dtype=torch.bool)
    terms = loss(
        logp=logp.detach(),
        old_logp=logp.detach(),
        advantages=torch.zeros(1),
        mask=mask,
        rehearsal_logp=logp,
        rehearsal_ref_logp=ref,
        rehearsal_mask=mask,
    )
    u = 0.5
    assert terms["divergence"].item() == pytest.approx((u - math.log(u) - 1) / 2)
    terms["loss"].backward()
    assert logp.grad[0, 0] < 0 and logp.grad[0, 1] == pytest.approx(0.0)  # raises the under-covered token


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"divergence": "kl"}, "rlvr.divergence"),
        ({"beta": -0.1}, "rlvr.beta"),
        ({"clip": 0.0}, "rlvr.clip"),
        ({"clip": 1.5}, "rlvr.clip"),
    ],
)
def test_bad_loss_settings(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GRPOLoss(**kwargs)


def test_pass_at_k_matches_the_closed_form_and_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1 - math.comb(n - c, k) / math.comb(n, k)
                samples = [1] * c + [0] * (n - c)
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert pass_at_k(200, 3, 1) == pytest.approx(3 / 200)
    assert mean_pass_at_k(4, [0, 4], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_rehearsal_set_is_sampled_once_then_read(tmp_path):
    calls = []

    def sample():
        calls.append(1)
        return {"tokens": torch.arange(6).view(2, 3), "ref_logp": torch.tensor([[-0.5, -1.0], [-2.0, 0.0]])}

    path = tmp_path / "rehearsal" / "abc.pt"
    first = load_or_sample_rehearsal(path, sample)
    second = load_or_sample_rehearsal(path, sample)
    assert len(calls) == 1 and path.is_file()
    assert all(torch.equal(first[k], second[k]) for k in first)
