"""data=preference (divlab.data.preference) on the tiny test tokenizer: batch layout, sources, config keys."""

import inspect
import json

import pytest

from divlab.data.preference import PreferenceDataModule
from divlab.errors import ConfigError

pytest.importorskip("transformers")

SMALL = {"max_prompt_tokens": 64, "max_response_tokens": 48, "batch_size": 3}


@pytest.fixture
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_offline_batch_has_chosen_then_rejected_rows(tok):
    dm = PreferenceDataModule(tokenizer=tok, n_train=6, n_val=3, n_test=3, **SMALL)
    batch = next(iter(dm.val_dataloader()))
    b = len(batch["index"])
    assert batch["tokens"].shape[0] == 2 * b == len(batch["length"])
    for i in range(b):
        p = int(batch["prompt_len"][i])
        assert p == int(batch["prompt_len"][b + i])
        assert batch["tokens"][i, :p].tolist() == batch["tokens"][b + i, :p].tolist()  # the same prompt
        e = dm.examples("val")[int(batch["index"][i])]
        for row, text in ((i, e["chosen"]), (b + i, e["rejected"])):
            response = batch["tokens"][row, p : int(batch["length"][row])].tolist()
            assert response[-1] == dm.eos_id and tok.decode(response[:-1]) == text
    assert len({e["prompt"] for s in ("train", "val", "test") for e in dm.examples(s)}) == 12


def test_hf_folder_source_and_its_bad_row(tok, tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}", "rejected": f"{i + 3}"} for i in range(6)]
    write_jsonl(folder / "train.jsonl", rows)
    dm = PreferenceDataModule(
        tokenizer=tok, source=f"hf:{folder}:train", n_train=None, n_val=1, n_test=1, **SMALL
    )
    assert sum(len(dm.examples(s)) for s in ("train", "val", "test")) == 6
    write_jsonl(folder / "train.jsonl", [*rows[:4], {"prompt": "x", "chosen": "", "rejected": "y"}])
    with pytest.raises(
        ConfigError, match=r"row 4 has no usable 'chosen' field \(it is not a non-empty string\)"
    ):
        PreferenceDataModule(
            tokenizer=tok, source=f"hf:{folder}:train", n_train=None, n_val=1, n_test=1, **SMALL
        )


def test_too_few_rows_and_missing_file(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3)
    with pytest.raises(ConfigError, match="has 3 rows, fewer than"):
        PreferenceDataModule(tokenizer=tok, source=str(path), n_train=5, n_val=1, n_test=1, **SMALL)
    with pytest.raises(ConfigError, match="neither offline"):
        PreferenceDataModule(tokenizer=tok, source=str(tmp_path / "nope.jsonl"), **SMALL)


def test_config_keys_are_constructor_arguments(compose_cfg):
    cfg = compose_cfg("task=dpo")
    keys = set(cfg.data.datamodule) - {"_target_"}
    params = set(inspect.signature(PreferenceDataModule).parameters) - {"seed"}
    assert keys == params
