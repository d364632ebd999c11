"""SequenceMatch loss: the data-only reduction to NLL, the regulariser read from the divergence library,
noise-and-backspace synthesis, and the one masked pass over a noised sequence."""

import math

import pytest
import torch
from backspace_oracle import apply_backspace

from divlab.divergences import get_divergence
from divlab.errors import ConfigError
from divlab.models.gpt import GPT, backspace_attention
from divlab.models.gpt_cache import backspace_state_index
from divlab.objectives.seqmatch import (
    MixtureRegulariser,
    Transitions,
    add_noise_and_backspace,
    sequencematch_loss,
    soft_q_transitions,
)
from divlab.tasks.lm import action_mask

V, EOS, BS, PAD = 9, 6, 7, 8  # content ids 0..5


def random_batch(b=4, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, V, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, 6, (b, t), generator=g)
    length = torch.tensor([10, 7, 9, 5])[:b]
    prompt_len = torch.tensor([3, 2, 1, 4])[:b]
    for r in range(b):
        tokens[r, length[r] - 1] = EOS  # terminal action
        tokens[r, length[r] :] = PAD
    return logits, tokens, prompt_len, length


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_data_only_loss_is_nll_plus_chi2_regulariser(gamma, alpha):
    logits, tokens, prompt_len, length = random_batch()
    mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
    reg = MixtureRegulariser(divergence=get_divergence("chi2_mixture"), alpha=alpha)
    data = soft_q_transitions(logits, tokens, mask, eos_id=EOS, gamma=gamma)
    loss, _ = sequencematch_loss(data, None, regulariser=reg, gamma=gamma)
    # independent reference, by hand: NLL from log_softmax, r from the definitions (SM1)-(SM2)
    logp = torch.log_softmax(logits, -1)
    nll, r2, n = 0.0, 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(int(prompt_len[b]) - 1, int(length[b]) - 1):
            a = int(tokens[b, t + 1])
            v_next = 0.0 if a == EOS else float(torch.logsumexp(logits[b, t + 1], -1))
            r = float(logits[b, t, a]) - gamma * v_next
            nll -= float(logp[b, t, a])
            r2 += r * r
            n += 1
    expected = nll / n + r2 / n / (4 * alpha)
    assert loss.dtype == torch.float64
    assert abs(float(loss) - expected) < 1e-6
    assert float(data.nll[mask].mean()) == pytest.approx(nll / n, abs=1e-9)


def test_policy_terms_enter_the_mixture():
    logits, tokens, prompt_len, length = random_batch()
    mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
    reg = MixtureRegulariser(divergence=get_divergence("chi2_mixture"), alpha=0.5)
    data = soft_q_transitions(logits, tokens, mask, eos_id=EOS, gamma=0.9)
    pol = soft_q_transitions(logits.flip(0), tokens.flip(0), mask.flip(0), eos_id=EOS, gamma=0.9)
    loss, terms = sequencematch_loss(data, pol, regulariser=reg, gamma=0.9, policy_weight=0.25)

    def mean(x, m):
        return x[m].mean()

    d_v = mean(data.v - 0.9 * data.v_next, data.mask)
    p_v = mean(pol.v - 0.9 * pol.v_next, pol.mask)
    expected = (
        -mean(data.r, data.mask)
        + 0.75 * d_v
        + 0.25 * p_v
        + 0.75 * mean(data.r**2, data.mask) / 2
        + 0.25 * mean(pol.r**2, pol.mask) / 2
    )
    torch.testing.assert_close(loss, expected)


def legendre(f, f_prime, t: float) -> float:
    """sup_u t u - g(u), g = f normalised by f'(1) (f(1) = 0), on a dense log grid of u, float64."""
    u = torch.logspace(-8, 4, 400_001, dtype=torch.float64)
    c = float(f_prime(torch.tensor(1.0, dtype=torch.float64)))
    g = f(u) - c * (u - 1)
    return float((t * u - g).max())


@pytest.mark.parametrize("name", ["forward_kl", "js"])
def test_conjugates_match_the_library_generator(name):
    d = get_divergence(name)
    for t in [-2.0, -0.5, 0.0, 0.1, 0.3] + ([1.0] if name == "forward_kl" else []):
        closed = float(MixtureRegulariser.conjugate(name, torch.tensor(t, dtype=torch.float64)))
        assert closed == pytest.approx(legendre(d.f, d.f_prime, t), abs=1e-5), t


def test_chi2_mixture_is_pearson_to_the_mixture_and_gives_r_squared():
    g = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    mix_logits = ((p + q) / 2).log()
    torch.testing.assert_close(
        get_divergence("chi2_mixture")(p_logits, q_logits),
        get_divergence("pearson_chi2")(p_logits, mix_logits),
    )
    pearson = get_divergence("pearson_chi2")
    t = 0.7
    assert float(MixtureRegulariser.conjugate("chi2_mixture", torch.tensor(t))) == pytest.approx(
        legendre(pearson.f, pearson.f_prime, t), abs=1e-5
    )
    r = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(
        MixtureRegulariser(divergence=get_divergence("chi2_mixture"), alpha=0.5)(r), r**2 / 2
    )


@pytest.mark.parametrize("name", ["chi2_mixture", "forward_kl", "js"])
def test_every_regulariser_has_the_same_curvature_at_zero(name):
    alpha = 0.5
    reg = MixtureRegulariser(divergence=get_divergence(name), alpha=alpha)
    h = 1e-3
    r = torch.tensor([-h, 0.0, h], dtype=torch.float64)
    psi = reg(r)
    assert float(psi[1]) == pytest.approx(0.0, abs=1e-12)
    assert float((psi[0] - 2 * psi[1] + psi[2]) / h**2) == pytest.approx(1 / (2 * alpha), rel=1e-4)


def test_js_regulariser_is_finite_and_smooth_past_its_domain():
    reg = MixtureRegulariser(divergence=get_divergence("js"), alpha=0.5)
    r_max = reg.c * reg.t_max
    r = torch.tensor([r_max - 1e-6, r_max + 1e-6, 10.0, 100.0], dtype=torch.float64, requires_grad=True)
    psi = reg(r)
    assert torch.isfinite(psi).all()
    psi.sum().backward()
    psi = psi.detach()
    assert float(psi[0]) == pytest.approx(float(psi[1]), rel=1e-4)  # continuous
    assert float(r.grad[0]) == pytest.approx(float(r.grad[1]), rel=1e-4)  # and so is its slope
    assert (r.grad[2:] > 0).all()  # still pushes r back down


def test_unknown_regulariser_and_bad_alpha():
    with pytest.raises(ConfigError, match="chi2_mixture"):
        MixtureRegulariser(divergence=get_divergence("total_variation"))
    with pytest.raises(ConfigError, match="alpha"):
        MixtureRegulariser(divergence=get_divergence("chi2_mixture"), alpha=0.0)


# ---- noise and backspace ---------------------------------------------------------------------------


def test_noise_and_backspace_synthesis():
    _, tokens, prompt_len, length = random_batch(seed=3)
    g = torch.Generator().manual_seed(0)
    new, new_len, is_noise = add_noise_and_backspace(
        tokens,
        prompt_len=prompt_len,
        length=length,
        p_noise=0.4,
        noise_ids=torch.arange(6),
        bs_id=BS,
        pad_id=PAD,
        generator=g,
    )
    inserted = 0
    for r in range(len(tokens)):
        clean = tokens[r, : length[r]].tolist()
        row = new[r, : new_len[r]].tolist()
        p = int(prompt_len[r])
        assert row[:p] == clean[:p]  # the prompt is untouched
        assert apply_backspace(row, p, bs_id=BS) == clean  # deleting the noise gives the data back
        assert (new[r, new_len[r] :] == PAD).all()
        for i in torch.nonzero(is_noise[r]).flatten().tolist():
            inserted += 1
            assert i >= p and row[i + 1] == BS and row[i] != row[i + 2]  # noise, <bs>, then the true token
    assert inserted > 0
    # the noise token is never a target; the <bs> after it is, and so is the true token after <bs>
    mask = action_mask(new.shape, prompt_len=prompt_len, length=new_len) & ~is_noise[:, 1:]
    targets = torch.where(mask, new[:, 1:], torch.full_like(new[:, 1:], -1))
    assert not (is_noise[:, 1:] & mask).any()
    assert int((targets == BS).sum()) == inserted
    same, same_len, none = add_noise_and_backspace(
        tokens,
        prompt_len=prompt_len,
        length=length,
        p_noise=0.0,
        noise_ids=torch.arange(6),
        bs_id=BS,
        pad_id=PAD,
        generator=g,
    )
    assert torch.equal(same_len, length) and not none.any()
    assert all(same[r, : length[r]].tolist() == tokens[r, : length[r]].tolist() for r in range(len(tokens)))


def test_noise_rate_close_to_p():
    tokens = torch.zeros(200, 12, dtype=torch.long)
    length, prompt_len = torch.full((200,), 12), torch.full((200,), 2)
    _, _, is_noise = add_noise_and_backspace(
        tokens,
        prompt_len=prompt_len,
        length=length,
        p_noise=0.2,
        noise_ids=torch.arange(6),
        bs_id=BS,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(0),
    )
    rate = is_noise.sum().item() / (200 * 10)
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 2000)


def test_one_masked_pass_over_a_noised_row_equals_per_state_passes():
    torch.manual_seed(0)
    model = GPT(vocab_size=V, n_layer=2, n_head=2, d_model=16, context_length=32).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    _, tokens, prompt_len, length = random_batch(seed=5)
    new, new_len, is_noise = add_noise_and_backspace(
        tokens,
        prompt_len=prompt_len,
        length=length,
        p_noise=0.5,
        noise_ids=torch.arange(6),
        bs_id=BS,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(2),
    )
    mask, pos = backspace_attention(new, bs_id=BS, prompt_len=prompt_len)
    logits = model(new, attention_mask=mask, position_ids=pos)
    trans = soft_q_transitions(
        logits, new, action_mask(new.shape, prompt_len=prompt_len, length=new_len), eos_id=EOS, gamma=1.0
    )
    assert is_noise[:2].any()
    for r in range(2):
        row, p = new[r, : new_len[r]].tolist(), int(prompt_len[r])
        for i in range(len(row)):
            # the state seen at position i: alive tokens, plus the <bs> itself when row[i] is a <bs>
            state = apply_backspace(row[: i + 1], p, bs_id=BS)
            seq = state + [BS] if row[i] == BS and i >= p else state
            ref = model(torch.tensor([seq]))[0, -1]
            torch.testing.assert_close(logits[r, i], ref, atol=1e-10, rtol=0)
            if i < len(row) - 1:
                torch.testing.assert_close(trans.v[r, i], torch.logsumexp(ref, -1))


def test_popped_state_after_backspace_equals_per_state_recomputation():
    # bs_state=popped (the paper's reference): after <bs> the state is the shortened prefix, so every
    # transition's Q(s, a), V(s) and V(s') equal a plain causal pass over the prefix alone (no <bs> fed).
    torch.manual_seed(1)
    model = GPT(vocab_size=V, n_layer=2, n_head=2, d_model=16, context_length=32).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    # row 0: prompt [1, 2]; a <bs> on the bare prompt (no-op), noise 5 deleted, two deletions in a row
    # row 1: prompt [3]; noise then <bs>, ends in <eos>
    tokens = torch.tensor(
        [[1, 2, BS, 4, 5, BS, 0, 3, BS, BS, 2, EOS], [3, 0, 5, BS, 1, 2, EOS, PAD, PAD, PAD, PAD, PAD]]
    )
    prompt_len, length = torch.tensor([2, 1]), torch.tensor([12, 7])
    index = backspace_state_index(tokens, bs_id=BS, prompt_len=prompt_len)
    # by hand: row 0 position 2 (<bs> on the prompt) -> 1; 5 (deletes 5) -> 3; 8 (deletes 3) -> 6; 9 (deletes 0) -> 3
    assert index[0].tolist() == [0, 1, 1, 3, 4, 3, 6, 7, 6, 3, 10, 11]
    assert index[1].tolist() == [0, 1, 2, 1, 4, 5, 6, 7, 8, 9, 10, 11]
    mask, pos = backspace_attention(tokens, bs_id=BS, prompt_len=prompt_len)
    logits = model(tokens, attention_mask=mask, position_ids=pos)
    act = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
    popped = soft_q_transitions(logits, tokens, act, eos_id=EOS, gamma=0.9, state_index=index)
    conditioned = soft_q_transitions(logits, tokens, act, eos_id=EOS, gamma=0.9)
    for r in range(2):
        row, p = tokens[r, : length[r]].tolist(), int(prompt_len[r])
        for i in range(len(row) - 1):
            state = apply_backspace(row[: i + 1], p, bs_id=BS)
            ref = model(torch.tensor([state]))[0, -1]  # V(s_i), Q(s_i, .) of the prefix
            nxt = torch.logsumexp(
                model(torch.tensor([apply_backspace(row[: i + 2], p, bs_id=BS)]))[0, -1], -1
            )
            nxt = torch.zeros_like(nxt) if row[i + 1] == EOS else nxt
            torch.testing.assert_close(popped.v[r, i], torch.logsumexp(ref, -1), atol=1e-10, rtol=0)
            torch.testing.assert_close(
                popped.nll[r, i], torch.logsumexp(ref, -1) - ref[row[i + 1]], atol=1e-10, rtol=0
            )
            torch.testing.assert_close(popped.r[r, i], ref[row[i + 1]] - 0.9 * nxt, atol=1e-10, rtol=0)
    # the two semantics differ exactly at the states after a <bs>
    after_bs = tokens[:, :-1] == BS
    assert not torch.allclose(popped.v[after_bs], conditioned.v[after_bs])
    torch.testing.assert_close(popped.v[~after_bs], conditioned.v[~after_bs])


def test_transitions_dataclass_fields():
    logits, tokens, prompt_len, length = random_batch()
    mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
    tr = soft_q_transitions(logits, tokens, mask, eos_id=EOS, gamma=0.5)
    assert isinstance(tr, Transitions) and tr.r.shape == (4, 9)
    torch.testing.assert_close(tr.nll, tr.v - (tr.r + 0.5 * tr.v_next))
    assert (tr.v_next[tokens[:, 1:] == EOS] == 0).all()
