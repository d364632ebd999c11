"""divergences/topk.py and the top-k path of objectives/lm_distill.py: the tail-bucket loss equals the
full-vocabulary loss when k = V (value and gradient, every per-token divergence without labels, on a tiny
random Llama), and for k < V its gap is what the data-processing inequality and KL's chain rule say."""

import pytest
import torch
import torch.nn.functional as F

from divlab.divergences import available, fused_linear_divergence, get_divergence
from divlab.divergences.base import FDivergence
from divlab.divergences.topk import bucket_log_probs, fused_linear_topk_divergence, topk_log_probs
from divlab.errors import ConfigError
from divlab.objectives.lm_distill import TokenDistillLoss

TOKEN_DIVERGENCES = [
    n
    for n in available()
    if get_divergence(n).kind == "categorical" and not getattr(get_divergence(n), "needs_labels", False)
]


def tensors(seed=0, n=23, h=8, v=40):
    g = torch.Generator().manual_seed(seed)
    sh = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    sw = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    t_logits = 2.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    return sh, sw, t_logits


def test_every_token_divergence_is_covered():
    assert {
        "forward_kl",
        "reverse_kl",
        "js",
        "generalized_js",
        "total_variation",
        "skew_kl",
        "alpha_beta",
    } <= set(TOKEN_DIVERGENCES)


def test_topk_log_probs_and_buckets():
    _, _, t = tensors()
    ids, logp, tail = topk_log_probs(t, 5)
    full = F.log_softmax(t, -1)
    assert torch.equal(ids, full.topk(5, -1).indices) and torch.allclose(logp, full.gather(-1, ids))
    mass = full.exp().gather(-1, ids).sum(-1)
    assert torch.allclose(tail.exp(), 1 - mass, atol=1e-12)
    buckets = bucket_log_probs(t, ids, with_tail=True)
    assert buckets.shape == (t.shape[0], 6) and torch.allclose(
        buckets.exp().sum(-1), torch.ones(t.shape[0]).double()
    )
    ids_all, _, tail_all = topk_log_probs(t, 10**6)  # k above V: capped, no tail mass
    assert ids_all.shape == t.shape and torch.isinf(tail_all).all()


@pytest.mark.parametrize("name", TOKEN_DIVERGENCES)
def test_k_equal_to_vocab_is_the_full_loss(name):
    sh, sw, t = tensors()
    div = get_divergence(name)
    full = fused_linear_divergence(sh, sw, teacher_logits=t, divergence=div, chunk_size=7)
    g_full = torch.autograd.grad(full, (sh, sw))
    ids, logp, tail = topk_log_probs(t, t.shape[1])
    top = fused_linear_topk_divergence(
        sh, sw, topk_ids=ids, topk_log_probs=logp.double(), tail_log_prob=tail, divergence=div, chunk_size=7
    )
    g_top = torch.autograd.grad(top, (sh, sw))
    assert torch.allclose(top.double(), full.double(), rtol=1e-5, atol=1e-7), (float(top), float(full))
    for a, b in zip(g_top, g_full):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in TOKEN_DIVERGENCES if isinstance(get_divergence(n), FDivergence)])
def test_k_below_vocab_never_exceeds_the_full_loss_and_grows_with_k(name):
    """Merging outcomes cannot increase an f-divergence, and the top-k partitions refine as k grows."""
    sh, sw, t = tensors(seed=1)
    div = get_divergence(name)
    with torch.no_grad():
        full = float(fused_linear_divergence(sh, sw, teacher_logits=t, divergence=div))
        values = []
        for k in (1, 4, 16, 39, 40):
            ids, logp, tail = topk_log_probs(t, k)
            values.append(
                float(
                    fused_linear_topk_divergence(
                        sh, sw, topk_ids=ids, topk_log_probs=logp.double(), tail_log_prob=tail, divergence=div
                    )
                )
            )
    assert all(a <= b + 1e-6 for a, b in zip(values, values[1:])), values
    assert values[-2] <= full + 1e-6 and values[-1] == pytest.approx(full, rel=1e-6)


def test_forward_kl_gap_is_the_tail_term_of_the_chain_rule():
    """KL(P||Q) - KL(P_k||Q_k) = p_tail * KL(P(.|tail) || Q(.|tail)), per position."""
    sh, sw, t = tensors(seed=2)
    k = 6
    with torch.no_grad():
        s = sh @ sw.t()
        ids, logp, tail = topk_log_probs(t, k)
        top = fused_linear_topk_divergence(
            sh, sw, topk_ids=ids, topk_log_probs=logp.double(), tail_log_prob=tail, divergence="forward_kl"
        )
        full = fused_linear_divergence(sh, sw, teacher_logits=t, divergence="forward_kl")
        outside = torch.ones_like(t, dtype=torch.bool).scatter(-1, ids, False)
        p_in = F.log_softmax(t.masked_fill(~outside, float("-inf")), -1)
        q_in = F.log_softmax(s.masked_fill(~outside, float("-inf")), -1)
        inner = torch.where(outside, p_in.exp() * (p_in - q_in), torch.zeros_like(t)).sum(-1)
        gap = (tail.double().exp() * inner).mean()
    assert float(full - top) == pytest.approx(float(gap), rel=1e-6, abs=1e-9)


def test_bad_shapes_and_label_divergences_fail_clearly():
    sh, sw, t = tensors()
    ids, logp, tail = topk_log_probs(t, 4)
    with pytest.raises(ConfigError, match="labels"):
        fused_linear_topk_divergence(
            sh, sw, topk_ids=ids, topk_log_probs=logp, tail_log_prob=tail, divergence="dkd"
        )
    with pytest.raises(ConfigError, match=r"\(N, k\)"):
        fused_linear_topk_divergence(sh, sw, topk_ids=ids, topk_log_probs=logp[:, :3], tail_log_prob=tail)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "generalized_js", "total_variation"])
def test_tiny_llama_loss_on_top_k_equals_full_at_k_equal_vocab(tiny_llama_dir, name):
    """TokenDistillLoss on a tiny random Llama pair: top-k at k = V equals the hidden-state (full) path, value
    and gradient; at k = V / 8 the gap is bounded as for any f-divergence (0 <= full - top-k <= full)."""
    from divlab.models.hf import build_hf_lm

    torch.manual_seed(0)
    teacher = build_hf_lm(source="local", path=str(tiny_llama_dir)).eval()
    student = build_hf_lm(
        source="config",
        base={"source": "local", "path": str(tiny_llama_dir)},
        overrides={"num_hidden_layers": 1},
        init="random",
    )
    tokens = torch.randint(0, teacher.vocab_size, (3, 14))
    with torch.no_grad():
        th = teacher.hidden_states(tokens)[:, :-1].reshape(-1, teacher.output_weight.shape[1])
        t_logits = (th / 2.0) @ teacher.output_weight.t()  # temperature 2
    sh = student.hidden_states(tokens)[:, :-1].reshape(-1, student.output_weight.shape[1])
    y = tokens[:, 1:].reshape(-1)
    loss = TokenDistillLoss(
        divergence=get_divergence(name), ce_weight=0.0, kd_weight=1.0, temperature=2.0, chunk_rows=9
    )
    full = loss(
        student_hidden=sh,
        student_weight=student.output_weight,
        targets=y,
        teacher_hidden=th,
        teacher_weight=teacher.output_weight,
    )
    params = [p for p in student.parameters() if p.requires_grad]
    g_full = torch.autograd.grad(full["loss"], params, retain_graph=True, allow_unused=True)
    vocab = teacher.vocab_size
    for k in (vocab, vocab // 8):
        top = loss(
            student_hidden=sh,
            student_weight=student.output_weight,
            targets=y,
            teacher_hidden=None,
            teacher_weight=None,
            teacher_topk=topk_log_probs(t_logits, k),
        )
        if k == vocab:
            assert float(top["kd"]) == pytest.approx(float(full["kd"]), rel=1e-5)
            g_top = torch.autograd.grad(top["loss"], params, retain_graph=True, allow_unused=True)
            for a, b in zip(g_top, g_full):
                assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-3, atol=1e-6)
        else:
            assert 0 <= float(full["kd"]) - float(top["kd"]) <= float(full["kd"])


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "js", "alpha_beta", "hinton_kd"])
def test_k_below_vocab_value_and_gradient_equal_autograd_on_the_buckets(name):
    """The closed-form chunk gradient equals autograd through eq. (1) on plain (N, V) logits."""
    sh, sw, t = tensors(seed=3)
    ids, logp, tail = topk_log_probs(t, 5)
    div = get_divergence(name)
    buckets = bucket_log_probs(sh @ sw.t(), ids, with_tail=True)
    plain = div(torch.cat([logp, tail[:, None]], -1), buckets, reduction="mean")
    g_plain = torch.autograd.grad(plain, (sh, sw))
    fused = fused_linear_topk_divergence(
        sh, sw, topk_ids=ids, topk_log_probs=logp, tail_log_prob=tail, divergence=div, chunk_size=7
    )
    g_fused = torch.autograd.grad(fused, (sh, sw))
    assert torch.allclose(fused, plain, rtol=1e-10)
    for a, b in zip(g_fused, g_plain):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
