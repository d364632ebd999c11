"""data=preference_arith (divlab.data.preference_arith) and the GPT policy adapter of task=dpo
(divlab.tasks.dpo_policy): chosen is the problem's answer, rejected another number, the answer format round-trips,
the adapter's logits and batched generation equal the GPT's own, bad settings fail in one sentence."""

import numpy as np
import pytest
import torch

from divlab.data.preference_arith import (
    ArithPreferenceDataModule,
    perturbed_answer,
    read_answer,
    write_answer,
)
from divlab.errors import ConfigError
from divlab.models import GPT
from divlab.tasks.dpo_policy import GPTPolicy

ARITH = {"base": 10, "n_digits": 2, "ops": "+-", "reverse_answer": True, "pad_operands": True}
ARITH_SIZES = {"n_train": 64, "n_val": 16, "n_test": 16, "batch_size": 8, "data_seed": 3}


def module(**kw):
    sizes = {"n_train": 40, "n_val": 8, "n_test": 12, "batch_size": 4, "rejected": "perturbed"}
    return ArithPreferenceDataModule(arith={**ARITH, **ARITH_SIZES}, **{**sizes, **kw})


def value_of(prompt: str) -> int:
    op = "+" if "+" in prompt else "-"
    a, b = prompt.rstrip("=").split(op)
    return int(a) + int(b) if op == "+" else int(a) - int(b)


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("value", [0, 7, 30, 105, -4, -90])
def test_answer_format_round_trips(value, reverse):
    text = write_answer(value, base=10, reverse=reverse)
    assert read_answer(text, base=10, reverse=reverse) == value
    rng = np.random.default_rng(value + 100)
    wrong = perturbed_answer(text, rng, base=10, reverse=reverse)
    assert wrong != text and read_answer(wrong, base=10, reverse=reverse) != value


def test_chosen_is_the_answer_and_rejected_is_not():
    dm = module()
    for split, n in (("train", 40), ("val", 8), ("test", 12)):
        rows = dm.examples(split)
        assert len(rows) == n == len(dm.dataset(split))
        for e in rows:
            assert e["chosen"] == e["answer"] != e["rejected"]
            assert read_answer(e["chosen"], base=10, reverse=True) == value_of(e["prompt"])
            assert read_answer(e["rejected"], base=10, reverse=True) != value_of(e["prompt"])
            assert dm.correct(e["chosen"], e["answer"]) and dm.wrong(e["rejected"], e["answer"])
    held_out = {e["prompt"] for s in ("val", "test") for e in dm.examples(s)}
    assert not held_out & {e["prompt"] for e in dm.examples("train")}
    batch = next(iter(dm.test_dataloader()))
    b = batch["index"].shape[0]
    tok = dm.tokenizer
    first = batch["tokens"][0, : batch["length"][0]].tolist()
    assert first[0] == tok.bos_id and first[-1] == tok.eos_id
    assert tok.decode(first[batch["prompt_len"][0] :]) == dm.examples("test")[0]["chosen"]
    assert tok.decode(batch["tokens"][b, : batch["length"][b]].tolist()).endswith(
        dm.examples("test")[0]["rejected"]
    )


def test_correct_and_wrong_are_strings_of_the_base():
    dm = module()
    assert not dm.correct("3", "03") and dm.wrong("3", "03")  # "3" is not "03" (reversed: 30)
    assert not dm.wrong("", "03") and not dm.wrong("0+", "03") and not dm.wrong("03", "03")
    assert dm.wrong("-12", "21")


def test_start_data_is_the_arithmetic_config():
    data = module().start_data()
    assert data["name"] == "arith" and data["datamodule"]["_target_"].endswith("ArithmeticDataModule")
    assert data["datamodule"]["n_train"] == 64 and data["datamodule"]["reverse_answer"] is True


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"n_train": 65}, r"data\.datamodule\.n_train=65 is more than the 64 problems"),
        ({"rejected": "model"}, r"data\.datamodule\.rejected must be one of"),
        ({"batch_size": 0}, r"data\.datamodule\.batch_size must be an integer >= 1"),
    ],
)
def test_bad_settings_fail_in_one_sentence(kw, words):
    with pytest.raises(ConfigError, match=words):
        module(**kw)


def test_arith_with_a_target_is_refused():
    with pytest.raises(ConfigError, match=r"data\.datamodule\.arith must be a mapping"):
        ArithPreferenceDataModule(arith={"_target_": "x", **ARITH})


def test_gpt_policy_logits_and_batched_generation_match_the_gpt():
    torch.manual_seed(0)
    dm = module()
    gpt = GPT(vocab_size=dm.vocab_size, n_layer=1, n_head=2, d_model=16, context_length=32)
    policy = GPTPolicy(gpt=gpt, tokenizer=dm.tokenizer)
    batch = next(iter(dm.train_dataloader()))
    attention = torch.arange(batch["tokens"].shape[1])[None] < batch["length"][:, None]
    logits = policy.hidden_states(batch["tokens"], attention) @ policy.output_weight.T
    torch.testing.assert_close(logits, gpt(batch["tokens"]))
    # left-padded prompts of two lengths, greedy: each row as if generated alone, pad after its first eos
    tok = dm.tokenizer
    prompts = [tok.encode("12+34=", add_bos=True), tok.encode("5+6=", add_bos=True)]
    ids = torch.full((2, 7), tok.pad_id)
    ids[0], ids[1, 2:] = torch.tensor(prompts[0]), torch.tensor(prompts[1])
    mask = (torch.arange(7)[None] >= torch.tensor([[0], [2]])).long()
    new = policy.generate(ids, mask, max_new_tokens=5, temperature=0.0)
    assert new.shape == (2, 5)
    for row, p in zip(new.tolist(), prompts):
        alone = gpt.generate(torch.tensor([p]), max_new_tokens=5, temperature=0.0, eos_id=tok.eos_id)[
            0, len(p) :
        ]
        alone = alone.tolist()
        cut = alone.index(tok.eos_id) + 1 if tok.eos_id in alone else len(alone)
        assert row[:cut] == alone[:cut] and all(t == tok.pad_id for t in row[cut:])
    with pytest.raises(ValueError, match="right-padded"):
        policy.hidden_states(ids, mask)
