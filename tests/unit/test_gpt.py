"""The small GPT: shapes, causality, the SequenceMatch backspace mask, and the KV cache."""

import pytest
import torch

from divlab.errors import ConfigError
from divlab.models.gpt import GPT, KVCache, backspace_attention

VOCAB, BS = 12, 11  # token 11 plays <bs>
ATOL = 1e-5


def tiny_gpt(
    positions: str = "rotary", *, tie_weights: bool = True, context_length: int = 32, seed: int = 0
) -> GPT:
    torch.manual_seed(seed)
    model = GPT(
        vocab_size=VOCAB,
        n_layer=2,
        n_head=2,
        d_model=32,
        context_length=context_length,
        positions=positions,
        tie_weights=tie_weights,
    )
    with torch.no_grad():  # larger weights than the 0.02 init, so that wrong masks/positions show up
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def last_logits(model: GPT, tokens: list[int]) -> torch.Tensor:
    """Plain causal forward on one materialised sequence; logits at its last position."""
    return model(torch.tensor([tokens]))[0, -1]


def materialise(tokens: list[int], *, prompt_len: int) -> list[list[int]]:
    """Reference: the sequence each position's logits must equal (see backspace_attention)."""
    state: list[int] = []
    out = []
    for i, tok in enumerate(tokens):
        if tok == BS and i >= prompt_len:
            if len(state) > prompt_len:
                state.pop()
            out.append(state + [BS])  # the <bs> position: state after deletion, then <bs>
        else:
            state.append(tok)
            out.append(list(state))
    return out


POSITIONS = ["rotary", "learned"]


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("tie_weights", [True, False])
def test_shapes_hidden_and_tying(positions, tie_weights):
    model = tiny_gpt(positions, tie_weights=tie_weights)
    idx = torch.randint(0, VOCAB, (3, 7))
    logits, hidden = model(idx, return_hidden=True)
    assert logits.shape == (3, 7, VOCAB) and hidden.shape == (3, 7, 32)
    torch.testing.assert_close(logits, hidden @ model.lm_head.weight.T)
    torch.testing.assert_close(model.hidden_states(idx), hidden)
    assert (model.lm_head.weight is model.tok_emb.weight) == tie_weights
    n_manual = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters() == n_manual


def test_num_parameters_counts_tied_embedding_once():
    tied, untied = tiny_gpt(tie_weights=True), tiny_gpt(tie_weights=False)
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 32
    learned = tiny_gpt("learned")
    assert learned.num_parameters() - tied.num_parameters() == 32 * 32  # context_length x d_model


@pytest.mark.parametrize("positions", POSITIONS)
def test_causal(positions):
    model = tiny_gpt(positions)
    idx = torch.randint(0, VOCAB, (2, 10))
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=ATOL, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_bad_config_raises():
    with pytest.raises(ConfigError, match="divisible"):
        GPT(vocab_size=5, n_layer=1, n_head=3, d_model=32, context_length=8)
    with pytest.raises(ConfigError, match="positions"):
        GPT(vocab_size=5, n_layer=1, n_head=2, d_model=32, context_length=8, positions="sinusoidal")
    with pytest.raises(ConfigError, match="even head width"):
        GPT(vocab_size=5, n_layer=1, n_head=2, d_model=6, context_length=8)


def test_learned_positions_refuse_too_long_input():
    model = tiny_gpt("learned", context_length=8)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ---- SequenceMatch backspace mask -------------------------------------------------------------

# prompt [1, 2]; "3 <bs>" deletes 3; the second <bs> would delete the prompt, so it is a no-op;
# "5 6 <bs>" deletes 6; the last <bs> deletes 7.
EXAMPLE = [1, 2, 3, BS, BS, 5, 6, BS, 7, BS, 8]
EXAMPLE_PROMPT = 2


def test_backspace_attention_by_hand():
    mask, pos = backspace_attention(torch.tensor(EXAMPLE), bs_id=BS, prompt_len=EXAMPLE_PROMPT)
    assert pos.tolist() == [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    attends = [torch.nonzero(row).flatten().tolist() for row in mask]
    assert attends == [
        [0],
        [0, 1],
        [0, 1, 2],
        [0, 1, 3],  # <bs> after deleting 3: prompt + itself
        [0, 1, 4],  # no-op <bs>: prompt + itself
        [0, 1, 5],
        [0, 1, 5, 6],
        [0, 1, 5, 7],  # 6 deleted
        [0, 1, 5, 8],
        [0, 1, 5, 9],  # 7 deleted
        [0, 1, 5, 10],
    ]
    assert mask.dtype == torch.bool and pos.dtype == torch.long
    assert not (mask & ~torch.ones_like(mask).tril()).any()  # never attends to the future


def test_backspace_on_empty_state_is_a_noop():
    mask, pos = backspace_attention([BS, 4, BS, BS, 5], bs_id=BS)
    assert pos.tolist() == [0, 0, 0, 0, 0]
    assert [torch.nonzero(r).flatten().tolist() for r in mask] == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("positions", POSITIONS)
def test_masked_single_pass_equals_materialised_states(positions):
    model = tiny_gpt(positions)
    mask, pos = backspace_attention(torch.tensor([EXAMPLE]), bs_id=BS, prompt_len=EXAMPLE_PROMPT)
    logits = model(torch.tensor([EXAMPLE]), attention_mask=mask, position_ids=pos)[0]
    states = materialise(EXAMPLE, prompt_len=EXAMPLE_PROMPT)
    for i, state in enumerate(states):
        torch.testing.assert_close(logits[i], last_logits(model, state), atol=ATOL, rtol=0)
    # the mask matters: after the first deletion a plain causal pass disagrees
    plain = model(torch.tensor([EXAMPLE]))[0]
    assert not torch.allclose(plain[5], logits[5], atol=1e-3)


@pytest.mark.parametrize("positions", POSITIONS)
def test_masked_pass_batched_rows_with_own_prompts(positions):
    model = tiny_gpt(positions)
    rows = [[1, 2, 3, BS, 4, 5, BS, BS, 6], [9, BS, 3, 3, BS, 7, 8, BS, 0]]
    prompt_lens = [3, 1]
    mask, pos = backspace_attention(torch.tensor(rows), bs_id=BS, prompt_len=torch.tensor(prompt_lens))
    assert mask.shape == (2, 9, 9) and pos.shape == (2, 9)
    logits = model(torch.tensor(rows), attention_mask=mask[:, None], position_ids=pos)  # (B, 1, T, T) form
    for r, (row, n_prompt) in enumerate(zip(rows, prompt_lens)):
        for i, state in enumerate(materialise(row, prompt_len=n_prompt)):
            torch.testing.assert_close(logits[r, i], last_logits(model, state), atol=ATOL, rtol=0)


@pytest.mark.parametrize("positions", POSITIONS)
def test_masked_pass_incremental_with_cache(positions):
    """A batched sampler can keep appending and hide deleted positions with the mask."""
    model = tiny_gpt(positions)
    rows = torch.tensor([EXAMPLE, [3, 4, BS, 5, 6, 7, BS, BS, 1, 2, BS]])
    mask, pos = backspace_attention(rows, bs_id=BS, prompt_len=torch.tensor([EXAMPLE_PROMPT, 1]))
    full = model(rows, attention_mask=mask, position_ids=pos)
    cache = model.new_kv_cache()
    steps = [model(rows[:, :3], attention_mask=mask[:, :3, :3], position_ids=pos[:, :3], kv_cache=cache)]
    for i in range(3, rows.shape[1]):
        steps.append(
            model(
                rows[:, i : i + 1],
                attention_mask=mask[:, i : i + 1, : i + 1],
                position_ids=pos[:, i : i + 1],
                kv_cache=cache,
            )
        )
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def test_attention_mask_shape_and_dtype_checked():
    model = tiny_gpt()
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="boolean"):
        model(idx, attention_mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="shape"):
        model(idx, attention_mask=torch.ones(1, 4, 5, dtype=torch.bool))


# ---- KV cache -----------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_kv_cache_incremental_equals_full(positions, chunk):
    model = tiny_gpt(positions)
    idx = torch.randint(0, VOCAB, (2, 13))
    full = model(idx)
    cache = model.new_kv_cache()
    parts = [model(idx[:, i : i + chunk], kv_cache=cache) for i in range(0, 13, chunk)]
    assert cache.length == len(cache) == 13
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("positions", POSITIONS)
def test_kv_cache_pop_then_reappend_equals_recomputation(positions):
    model = tiny_gpt(positions)
    cache = model.new_kv_cache()
    model(torch.tensor([[1, 2, 3, 4, 5, 6]]), kv_cache=cache)
    cache.pop(2)  # two backspaces: the state is [1, 2, 3, 4]
    assert cache.length == 4
    logits = model(torch.tensor([[7, 8]]), kv_cache=cache)
    torch.testing.assert_close(logits[0], model(torch.tensor([[1, 2, 3, 4, 7, 8]]))[0, 4:], atol=ATOL, rtol=0)
    cache.pop(6)
    logits = model(torch.tensor([[9]]), kv_cache=cache)
    torch.testing.assert_close(logits[0, 0], last_logits(model, [9]), atol=ATOL, rtol=0)


def test_kv_cache_bounds():
    cache = KVCache(n_layer=2, max_length=4)
    with pytest.raises(ValueError, match="pop"):
        cache.pop(1)
    model = tiny_gpt(context_length=4)
    model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="full"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=cache)
    cache.reset()
    assert cache.length == 0


def greedy_without_cache(model: GPT, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    seen = []
    for _ in range(n):
        logits = model(idx)[:, -1]
        seen.append(logits)
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx, seen


@pytest.mark.parametrize("positions", POSITIONS)
def test_greedy_generate_equals_recomputation(positions):
    model = tiny_gpt(positions)
    prompt = torch.randint(0, VOCAB, (3, 4))
    expected, full_logits = greedy_without_cache(model, prompt, 12)
    torch.testing.assert_close(model.generate(prompt, max_new_tokens=12, temperature=0.0), expected)
    # and the logits seen along the way, step by step with the cache
    cache = model.new_kv_cache()
    logits = model(prompt, kv_cache=cache)[:, -1]
    for step in range(12):
        torch.testing.assert_close(logits, full_logits[step], atol=ATOL, rtol=0)
        logits = model(expected[:, 4 + step : 5 + step], kv_cache=cache)[:, -1]


def test_generate_sampling_options():
    model = tiny_gpt()
    prompt = torch.randint(0, VOCAB, (2, 3))

    def draw(**kw):
        return model.generate(prompt, max_new_tokens=8, generator=torch.Generator().manual_seed(7), **kw)

    torch.testing.assert_close(draw(), draw())  # seeded generator: reproducible
    torch.testing.assert_close(draw(top_k=1), model.generate(prompt, max_new_tokens=8, temperature=0.0))
    with pytest.raises(ValueError, match="temperature"):
        draw(temperature=-1.0)


def test_generate_stops_at_eos_and_pads_finished_rows():
    model = tiny_gpt()
    prompt = torch.randint(0, VOCAB, (4, 2))
    eos = 10  # a frequent token under this seed, so every row ends well before 30 steps
    out = model.generate(prompt, max_new_tokens=30, generator=torch.Generator().manual_seed(0), eos_id=eos)
    assert out.shape[1] < 32  # stopped early
    for row in out[:, 2:].tolist():
        assert row[-1] == eos and set(row[row.index(eos) :]) == {eos}


@pytest.mark.parametrize("positions", POSITIONS)
def test_generate_past_context_length(positions):
    model = tiny_gpt(positions, context_length=8)
    out = model.generate(torch.zeros(1, 6, dtype=torch.long), max_new_tokens=20, temperature=0.0)
    assert out.shape == (1, 26)
