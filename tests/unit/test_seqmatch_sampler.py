"""The backspace-aware sampler: equal to full recomputation with backspace_attention, never deletes the
prompt, respects the step cap, and treats <bs> on an empty continuation as a no-op."""

import pytest
import torch
from backspace_oracle import apply_backspace

from divlab.models.gpt import GPT, backspace_attention
from divlab.tasks.seqmatch_sampler import sample_with_backspace

V, EOS, BS, PAD = 10, 7, 8, 9  # content ids 0..6


class BiasedGPT(GPT):
    """A GPT whose logits get a fixed bias, to make <bs> (or any token) as frequent as a test needs."""

    def __init__(self, bias: torch.Tensor, **kw):
        super().__init__(**kw)
        self.register_buffer("bias", bias)

    def forward(self, idx, **kw):
        return super().forward(idx, **kw) + self.bias


def model_with(bias_bs: float, seed: int = 0, positions: str = "rotary") -> BiasedGPT:
    torch.manual_seed(seed)
    bias = torch.zeros(V)
    bias[BS] = bias_bs
    model = BiasedGPT(
        bias, vocab_size=V, n_layer=2, n_head=2, d_model=16, context_length=64, positions=positions
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def reference_sample(model, inputs, input_len, prompt_len, *, max_steps, never, temperature, generator):
    """Slow reference: every step recomputes the whole row with backspace_attention (no cache)."""
    rows = [inputs[r, : input_len[r]].tolist() for r in range(len(inputs))]
    for _ in range(max_steps):
        last = []
        for r, row in enumerate(rows):
            mask, pos = backspace_attention(torch.tensor([row]), bs_id=BS, prompt_len=int(prompt_len[r]))
            last.append(model(torch.tensor([row]), attention_mask=mask, position_ids=pos)[0, -1])
        logits = torch.stack(last)
        logits[:, list(never)] = float("-inf")
        tok = GPT._sample(logits, temperature=temperature, top_k=None, generator=generator)
        for r, t in enumerate(tok.tolist()):
            rows[r].append(t)
    return rows


INPUTS = torch.tensor([[1, 2, 3, 4, 5], [6, 1, 2, PAD, PAD], [3, PAD, PAD, PAD, PAD]])
INPUT_LEN = torch.tensor([5, 3, 1])
PROMPT_LEN = torch.tensor([3, 3, 1])  # row 0 has a deletable forced prefix [4, 5]


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_sampler_equals_full_recomputation(positions):
    model = model_with(1.5, positions=positions)
    never = (EOS, PAD)  # no row ends, so every row takes every step
    ro = sample_with_backspace(
        model,
        INPUTS,
        input_len=INPUT_LEN,
        prompt_len=PROMPT_LEN,
        max_steps=12,
        bs_id=BS,
        eos_id=EOS,
        pad_id=PAD,
        never=never,
        generator=torch.Generator().manual_seed(3),
    )
    ref = reference_sample(
        model,
        INPUTS,
        INPUT_LEN,
        PROMPT_LEN,
        max_steps=12,
        never=never,
        temperature=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    got = [ro.tokens[r, : ro.length[r]].tolist() for r in range(3)]
    assert got == ref
    assert int(ro.n_backspace.sum()) > 3  # the test exercised deletions
    for r in range(3):
        assert ro.states[r] == apply_backspace(ref[r], int(PROMPT_LEN[r]), bs_id=BS)[int(PROMPT_LEN[r]) :]
    assert ro.n_actions.tolist() == [12, 12, 12] and not ro.ended.any()


def test_sampler_never_deletes_the_prompt_and_respects_the_cap():
    model = model_with(50.0)  # always <bs>
    ro = sample_with_backspace(
        model,
        INPUTS,
        input_len=INPUT_LEN,
        prompt_len=PROMPT_LEN,
        max_steps=7,
        bs_id=BS,
        eos_id=EOS,
        pad_id=PAD,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert ro.n_actions.tolist() == [7, 7, 7] and ro.n_backspace.tolist() == [7, 7, 7]
    assert ro.length.tolist() == [12, 10, 8]  # input + 7 actions, nothing more
    assert ro.states == [[], [], []]  # the forced prefix [4, 5] of row 0 was deleted
    for r in range(3):
        row = ro.tokens[r, : ro.length[r]].tolist()
        p = int(PROMPT_LEN[r])
        assert apply_backspace(row, p, bs_id=BS) == INPUTS[r, :p].tolist()  # ... and the prompt never
        assert (ro.tokens[r, ro.length[r] :] == PAD).all()


def test_backspace_on_empty_continuation_is_a_noop():
    """After a no-op <bs> the model sees exactly prompt + [<bs>], as in training."""
    model = model_with(50.0)
    prompt = torch.tensor([[1, 2]])
    ro = sample_with_backspace(
        model,
        prompt,
        input_len=torch.tensor([2]),
        prompt_len=torch.tensor([2]),
        max_steps=3,
        bs_id=BS,
        eos_id=EOS,
        pad_id=PAD,
        temperature=0.0,
    )
    assert ro.tokens[0].tolist() == [1, 2, BS, BS, BS] and ro.states == [[]]
    mask, pos = backspace_attention(torch.tensor([[1, 2, BS, BS]]), bs_id=BS, prompt_len=2)
    assert pos.tolist() == [[0, 1, 2, 2]]
    assert mask[0, 3].tolist() == [True, True, False, True]


def test_rows_stop_at_eos():
    bias = torch.zeros(V)
    bias[EOS] = 50.0
    model = BiasedGPT(bias, vocab_size=V, n_layer=1, n_head=2, d_model=16, context_length=16).eval()
    ro = sample_with_backspace(
        model,
        INPUTS,
        input_len=INPUT_LEN,
        prompt_len=PROMPT_LEN,
        max_steps=5,
        bs_id=BS,
        eos_id=EOS,
        pad_id=PAD,
        temperature=0.0,
    )
    assert ro.ended.all() and ro.n_actions.tolist() == [1, 1, 1]
    assert [ro.tokens[r, ro.length[r] - 1].item() for r in range(3)] == [EOS] * 3
    assert ro.states == [[4, 5], [], []]


def test_bad_arguments():
    model = model_with(0.0)
    with pytest.raises(ValueError, match="max_steps"):
        sample_with_backspace(
            model,
            INPUTS,
            input_len=INPUT_LEN,
            prompt_len=PROMPT_LEN,
            max_steps=0,
            bs_id=BS,
            eos_id=EOS,
            pad_id=PAD,
        )
    with pytest.raises(ValueError, match="prompt_len"):
        sample_with_backspace(
            model,
            INPUTS,
            input_len=INPUT_LEN,
            prompt_len=INPUT_LEN + 1,
            max_steps=2,
            bs_id=BS,
            eos_id=EOS,
            pad_id=PAD,
        )


def popped_reference_sample(model, inputs, input_len, prompt_len, *, max_steps, never, generator):
    """Slow reference of bs_state=popped: every step runs a plain causal pass over the row's current
    state (backspaces applied, no <bs> ever fed), the paper's popped-cache semantics."""
    rows = [inputs[r, : input_len[r]].tolist() for r in range(len(inputs))]
    for _ in range(max_steps):
        logits = torch.stack(
            [
                model(torch.tensor([apply_backspace(row, int(prompt_len[r]), bs_id=BS)]))[0, -1]
                for r, row in enumerate(rows)
            ]
        )
        logits[:, list(never)] = float("-inf")
        tok = GPT._sample(logits, temperature=1.0, top_k=None, generator=generator)
        for r, t in enumerate(tok.tolist()):
            rows[r].append(t)
    return rows


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_popped_sampler_equals_per_state_recomputation(positions):
    model = model_with(1.5, seed=1, positions=positions)
    never = (EOS, PAD)
    ro = sample_with_backspace(
        model,
        INPUTS,
        input_len=INPUT_LEN,
        prompt_len=PROMPT_LEN,
        max_steps=12,
        bs_id=BS,
        eos_id=EOS,
        pad_id=PAD,
        never=never,
        generator=torch.Generator().manual_seed(4),
        bs_state="popped",
    )
    ref = popped_reference_sample(
        model,
        INPUTS,
        INPUT_LEN,
        PROMPT_LEN,
        max_steps=12,
        never=never,
        generator=torch.Generator().manual_seed(4),
    )
    assert [ro.tokens[r, : ro.length[r]].tolist() for r in range(3)] == ref
    assert int(ro.n_backspace.sum()) > 3  # the test exercised deletions
    conditioned = sample_with_backspace(
        model,
        INPUTS,
        input_len=INPUT_LEN,
        prompt_len=PROMPT_LEN,
        max_steps=12,
        bs_id=BS,
        eos_id=EOS,
        pad_id=PAD,
        never=never,
        generator=torch.Generator().manual_seed(4),
    )
    assert [
        conditioned.tokens[r, : conditioned.length[r]].tolist() for r in range(3)
    ] != ref  # semantics differ
    with pytest.raises(ValueError, match="bs_state"):
        sample_with_backspace(
            model,
            INPUTS,
            input_len=INPUT_LEN,
            prompt_len=PROMPT_LEN,
            max_steps=2,
            bs_id=BS,
            eos_id=EOS,
            pad_id=PAD,
            bs_state="kept",
        )
