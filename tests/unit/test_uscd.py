"""USCD decoding (divlab.decoding): the step functions against closed forms and constructed logits, and the
decoding loop on a tiny divlab GPT and the tiny local HF Llama: USCD with threshold inf is greedy and with
threshold 0 is contrastive decoding, token for token; contrastive with weight 0 is greedy; the uncertainty is
the library divergence computed by hand; the applied fraction is recomputed by replaying the decoded steps;
KV-cached decoding equals recomputation, and a left-padded row equals its unpadded decode."""

import math

import pytest
import torch

from divlab.decoding import contrastive, contrastive_logits, generate, greedy, uncertainty, uscd_step
from divlab.errors import ConfigError
from divlab.models.gpt import GPT

STEPS = 10


def sharpen(model, seed: int = 0, scale: float = 0.3):
    """Larger random weights, so that the tiny random models do not decode one repeated token."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_gpt():
    torch.manual_seed(0)
    return sharpen(GPT(vocab_size=48, n_layer=2, n_head=2, d_model=32, context_length=64))


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from divlab.models.hf import build_hf_lm

    return sharpen(build_hf_lm(source="local", path=str(tiny_llama_dir)))


@pytest.fixture(params=["tiny_gpt", "tiny_llama"])
def lm(request):
    return request.getfixturevalue(request.param)


def prompts(model, batch: int = 3, length: int = 12, lame_from: int = 8, seed: int = 1):
    """Random standard prompts and lame prompts = their last tokens (the 'examples' dropped)."""
    ids = torch.randint(0, model.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids, ids[:, lame_from:].clone()


def by_hand(name: str, s: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    p, q = s.double().softmax(-1), l.double().softmax(-1)
    if name == "forward_kl":
        return (p * (p / q).log()).sum(-1)
    if name == "reverse_kl":
        return (q * (q / p).log()).sum(-1)
    m = (p + q) / 2
    return 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)


# ----------------------------------------------------------------------------- the step


def test_contrastive_logits_are_log_probability_differences_and_pick_the_raw_logit_argmax():
    gen = torch.Generator().manual_seed(0)
    s, l = torch.randn(64, 20, generator=gen) * 3, torch.randn(64, 20, generator=gen) * 3
    c = contrastive_logits(s, l, weight=0.7)
    torch.testing.assert_close(c, s.log_softmax(-1) - 0.7 * l.log_softmax(-1))
    assert torch.equal(c.argmax(-1), (s - 0.7 * l).argmax(-1))  # log_softmax shifts a row by a constant
    assert not torch.equal(c.argmax(-1), greedy(s))  # the contrast changes some tokens
    head = contrastive_logits(s, l, weight=0.7, plausibility=0.1)
    p = s.softmax(-1)
    outside = p < 0.1 * p.max(-1, keepdim=True).values
    assert outside.any() and torch.isinf(head[outside]).all() and torch.equal(head[~outside], c[~outside])


def test_contrastive_with_weight_zero_is_greedy():
    gen = torch.Generator().manual_seed(1)
    s, l = torch.randn(64, 20, generator=gen) * 3, torch.randn(64, 20, generator=gen) * 3
    assert torch.equal(contrastive(s, l, weight=0.0), greedy(s))
    assert torch.equal(contrastive(s, l, weight=0.0, plausibility=0.1), greedy(s))


@pytest.mark.parametrize("name", ["js", "forward_kl", "reverse_kl"])
def test_uncertainty_is_the_library_divergence_by_hand(name):
    gen = torch.Generator().manual_seed(2)
    s, l = torch.randn(16, 30, generator=gen) * 2, torch.randn(16, 30, generator=gen) * 2
    u = uncertainty(s, l, divergence=name)
    assert u.shape == (16,) and u.dtype == torch.float32
    torch.testing.assert_close(u.double(), by_hand(name, s, l), rtol=1e-5, atol=1e-6)


def test_uscd_step_limits_are_greedy_and_contrastive():
    gen = torch.Generator().manual_seed(3)
    s, l = torch.randn(64, 20, generator=gen) * 3, torch.randn(64, 20, generator=gen) * 3
    l[0] = s[0]  # u = 0 up to round-off: threshold 0 still contrasts
    ids, applied = uscd_step(s, l, threshold=math.inf, weight=0.8)
    assert torch.equal(ids, greedy(s)) and not applied.any()
    ids, applied = uscd_step(s, l, threshold=0.0, weight=0.8)
    assert torch.equal(ids, contrastive(s, l, weight=0.8)) and applied.all()
    assert not torch.equal(ids, greedy(s))


def test_uscd_step_contrasts_exactly_the_uncertain_rows():
    log = torch.log
    standard = log(torch.tensor([[0.5, 0.4, 0.05, 0.05]] * 3))
    lame = log(
        torch.tensor(
            [
                [0.5, 0.4, 0.05, 0.05],  # the same distribution: u = 0, greedy
                [0.9, 0.05, 0.025, 0.025],  # far: u large, contrast picks token 1
                [0.52, 0.38, 0.05, 0.05],  # near: contrast would pick token 1, but u is under the threshold
            ]
        )
    )
    tau = 0.05
    u = uncertainty(standard, lame, divergence="js")
    assert u[0] < 1e-6 and u[2] < tau < u[1]  # the constructed case is what it says
    assert (
        contrastive(standard, lame, weight=1.0).tolist() == [0, 1, 1] and greedy(standard).tolist() == [0] * 3
    )
    ids, applied = uscd_step(standard, lame, threshold=tau, weight=1.0, divergence="js")
    assert applied.tolist() == [False, True, False]
    assert ids.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"threshold": 0.1, "weight": -1.0}, "decode.weight"),
        ({"threshold": float("nan"), "weight": 1.0}, "decode.threshold"),
        ({"threshold": -0.5, "weight": 1.0}, "decode.threshold"),
        ({"threshold": 0.1, "weight": 1.0, "plausibility": 2.0}, "decode.plausibility"),
        ({"threshold": 0.1, "weight": 1.0, "divergence": "sinkhorn"}, "decode.divergence"),
        ({"threshold": 0.1, "weight": 1.0, "divergence": "pld"}, "decode.divergence"),
        ({"threshold": 0.1, "weight": 1.0, "divergence": "no_such"}, "no_such"),
    ],
)
def test_bad_step_settings_fail_in_one_sentence(kwargs, key):
    s = torch.randn(2, 5)
    with pytest.raises(ConfigError, match=key):
        uscd_step(s, s, **kwargs)


# ----------------------------------------------------------------------------- the loop


def test_greedy_loop_equals_each_models_own_greedy_generate(tiny_gpt, tiny_llama):
    ids, _ = prompts(tiny_gpt)
    out = generate(tiny_gpt, ids, max_new_tokens=STEPS)
    assert torch.equal(
        out.ids, tiny_gpt.generate(ids, max_new_tokens=STEPS, temperature=0.0)[:, ids.shape[1] :]
    )
    assert out.applied_fraction == 0.0 and out.live.all()
    ids, _ = prompts(tiny_llama)
    mask = torch.ones_like(ids)
    out = generate(tiny_llama, ids, standard_mask=mask, max_new_tokens=STEPS)
    assert torch.equal(out.ids, tiny_llama.generate(ids, mask, max_new_tokens=STEPS))


def test_uscd_is_greedy_at_threshold_inf_and_contrastive_at_zero(lm):
    ids, lame = prompts(lm)
    kw = {"lame_ids": lame, "max_new_tokens": STEPS, "weight": 1.0}
    plain = generate(lm, ids, max_new_tokens=STEPS)
    cd = generate(lm, ids, decode="contrastive", **kw)
    assert not torch.equal(cd.ids, plain.ids)  # the two limits differ, so the checks below can fail
    never = generate(lm, ids, decode="uscd", threshold=math.inf, **kw)
    always = generate(lm, ids, decode="uscd", threshold=0.0, **kw)
    assert torch.equal(never.ids, plain.ids) and never.applied_fraction == 0.0 and not never.applied.any()
    assert torch.equal(always.ids, cd.ids) and always.applied_fraction == 1.0
    assert torch.equal(always.applied, always.live) and cd.applied_fraction == 1.0
    zero = generate(lm, ids, decode="contrastive", lame_ids=lame, max_new_tokens=STEPS, weight=0.0)
    assert torch.equal(zero.ids, plain.ids)


def test_kv_cached_decoding_equals_recomputation(lm):
    ids, lame = prompts(lm)
    kw = {"lame_ids": lame, "max_new_tokens": STEPS, "weight": 1.0, "decode": "uscd", "threshold": 0.2}
    cached, recomputed = generate(lm, ids, **kw), generate(lm, ids, cache=False, **kw)
    assert torch.equal(cached.ids, recomputed.ids) and torch.equal(cached.applied, recomputed.applied)


def test_a_left_padded_row_decodes_as_without_padding(lm):
    ids, lame = prompts(lm)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    lame_mask = torch.ones_like(lame)
    lame_mask[1, :2] = 0
    kw = {"max_new_tokens": STEPS, "weight": 1.0, "decode": "contrastive"}
    batch = generate(lm, ids, standard_mask=mask, lame_ids=lame, lame_mask=lame_mask, **kw)
    alone0 = generate(lm, ids[:1, 5:], lame_ids=lame[:1], **kw)
    alone1 = generate(lm, ids[1:2], lame_ids=lame[1:2, 2:], **kw)
    assert torch.equal(batch.ids[0], alone0.ids[0]) and torch.equal(batch.ids[1], alone1.ids[0])
    recomputed = generate(lm, ids, standard_mask=mask, lame_ids=lame, lame_mask=lame_mask, cache=False, **kw)
    assert torch.equal(batch.ids, recomputed.ids)


def step_uncertainties(model, ids, lame, new, steps):
    """D(P_standard || Q_lame) at each step, recomputed from scratch on the decoded prefix."""
    out = []
    for k in range(steps):
        s = model(torch.cat([ids, new[:, :k]], dim=1))[:, -1]
        q = model(torch.cat([lame, new[:, :k]], dim=1))[:, -1]
        out.append(by_hand("js", s, q))
    return torch.stack(out, dim=1)


def test_applied_fraction_replays_the_threshold_rule(lm):
    ids, lame = prompts(lm, batch=2)
    eos = {"eos_id": -1} if hasattr(lm, "hf") else {}  # no row stops: every step is live
    with torch.no_grad():
        plain = generate(lm, ids, max_new_tokens=STEPS, **eos)
        u_plain = step_uncertainties(lm, ids, lame, plain.ids, STEPS)
        # the first step stays greedy and a later greedy step reaches the threshold: 0 < fraction < 1
        tau = float((u_plain[:, 0].max() + u_plain.max()) / 2)
        assert u_plain[:, 0].max() < tau < u_plain.max()
        out = generate(
            lm, ids, lame_ids=lame, max_new_tokens=STEPS, decode="uscd", threshold=tau, weight=1.0, **eos
        )
        u = step_uncertainties(lm, ids, lame, out.ids, STEPS)
    assert ((u - tau).abs() > 1e-4).all()  # no step sits on the threshold within round-off
    expected = u >= tau
    assert torch.equal(out.applied, expected) and out.live.all()
    assert out.applied_fraction == pytest.approx(expected.double().mean().item())
    assert 0.0 < out.applied_fraction < 1.0


def test_finished_rows_do_not_count_in_the_applied_fraction(tiny_gpt):
    ids, lame = prompts(tiny_gpt)
    kw = {"lame_ids": lame, "max_new_tokens": STEPS, "weight": 1.0, "decode": "contrastive"}
    free = generate(tiny_gpt, ids, **kw)
    row = free.ids[0].tolist()
    k = next(i for i in range(1, STEPS - 1) if row[i] not in row[:i])  # a token first emitted at step k
    eos = row[k]
    out = generate(tiny_gpt, ids, eos_id=eos, **kw)
    for r, tokens in enumerate(free.ids.tolist()):
        stop = tokens.index(eos) if eos in tokens else STEPS - 1
        assert out.live[r].tolist() == [i <= stop for i in range(STEPS)]
        assert out.ids[r, : stop + 1].tolist() == tokens[: stop + 1]
        assert (out.ids[r, stop + 1 :] == eos).all()  # a GPT keeps emitting eos, as GPT.generate does
    assert torch.equal(out.applied, out.live) and not out.live.all()
    assert out.applied_fraction == 1.0 and out.applied.double().mean() < 1.0


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"decode": "beam"}, "decode.mode"),
        ({"decode": "contrastive"}, "decode.weight"),
        ({"decode": "contrastive", "weight": 0.5, "lame_ids": None}, "lame_ids"),
        ({"decode": "uscd", "weight": 0.5}, "decode.threshold"),
        ({"decode": "uscd", "weight": 0.5, "threshold": 0.1, "lame_ids": "rows"}, "one lame prompt"),
        ({"standard_mask": "right"}, "left-padded"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_loop_settings_fail_in_one_sentence(tiny_gpt, kwargs, key):
    ids, lame = prompts(tiny_gpt)
    if kwargs.get("lame_ids") == "rows":
        kwargs["lame_ids"] = lame[:2]
    if kwargs.get("standard_mask") == "right":
        kwargs["standard_mask"] = torch.ones_like(ids).index_fill(1, torch.tensor([ids.shape[1] - 1]), 0)
    kw = {"lame_ids": lame, "max_new_tokens": 4, **kwargs}
    with pytest.raises(ConfigError, match=key):
        generate(tiny_gpt, ids, **kw)
    with pytest.raises(ConfigError, match="GPT or an HFCausalLM"):
        generate(torch.nn.Linear(2, 2), ids, max_new_tokens=2)
