"""Preference data for task=dpo (`data=preference`): a prompt, a chosen and a rejected response.

Sources (`source`):

- `offline`: the arithmetic word problems of divlab.data.instruct_offline (no download) with a verifiable
  preference: chosen = the correct one-sentence answer ("Tom has 19 apples."), rejected = the same sentence
  with a plausible wrong number: the answer off by 1 to 3, or its digits swapped ("Tom has 91 apples.");
- a `.jsonl` file of `{"prompt", "chosen", "rejected"}` rows (strings; optional integer "answer");
- `hf:<dataset>[:<split>]`: `datasets.load_dataset` (a Hub id for users with the network, or a local folder)
  whose rows have the same three string fields.

`rejected`: `perturbed` (the default) keeps the rejected responses above; `sampled` asks the task to replace
them, before training, by a wrong answer the start model itself samples (divlab.provision.rejected: the first
of `rejected_samples` samples at `rejected_temperature` whose final integer is not the answer; a prompt with
no wrong sample keeps its perturbed answer, counted and reported). It needs an integer answer on every row.

A permutation seeded by `data_seed` deals the rows to test, then val, then train (held-out prompts never train).
Every bad row fails before training in one sentence naming data.datamodule.source and its line (file) or
row (data set): a missing or empty field, or chosen == rejected.

Prompts are chat-templated with the model's tokenizer (`add_generation_prompt=True`; longer than
`max_prompt_tokens`: the first tokens go), responses are tokenised with eos and cut to `max_response_tokens`.
A batch of B preferences holds 2B rows in the layout of divlab's LM data (divlab.objectives.lm.action_mask):

    tokens      (2B, L)  rows 0..B-1: prompt + chosen + eos; rows B..2B-1: prompt + rejected + eos; pad_id after
    prompt_len  (2B,)    tokens of the templated prompt
    length      (2B,)    real tokens of the row
    index       (B,)     the row of examples(split) each preference came from
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from divlab.data.instruct import SPLITS, check_sizes, check_tokenizer, response_batch
from divlab.data.instruct_sources import hf_rows, jsonl_rows
from divlab.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "data.datamodule.source"
FIELDS = ("prompt", "chosen", "rejected")
REJECTED = ("perturbed", "sampled")


# ------------------------------------------------------------------ rows
def check_row(row: object, *, where: str) -> dict:
    """{"prompt", "chosen", "rejected", "answer"} of one row; `where` names it ("...: line 3")."""
    if not isinstance(row, Mapping):
        raise ConfigError(
            f"{where} is a {type(row).__name__}, not a JSON object with prompt, chosen, rejected."
        )
    for field in FIELDS:
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            state = "is missing" if field not in row else "is not a non-empty string"
            raise ConfigError(
                f"{where} has no usable {field!r} field (it {state}); each row needs {', '.join(FIELDS)}."
            )
    if row["chosen"].strip() == row["rejected"].strip():
        raise ConfigError(f"{where} has chosen == rejected; a preference needs two different responses.")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, bool) or not re.fullmatch(r"-?\d+", str(answer).strip())):
        raise ConfigError(f"{where} has an answer {answer!r} that is not an integer; remove it or write one.")
    return {
        "prompt": row["prompt"],
        "chosen": row["chosen"],
        "rejected": row["rejected"],
        "answer": None if answer is None else str(answer).strip(),
    }


def read_rows(source: str) -> list[dict]:
    """The checked rows of a .jsonl file or of `hf:<dataset>[:<split>]`, in order."""
    if source.startswith("hf:"):
        rows = [check_row(r, where=f"{KEY}={source}: row {i}") for i, r in enumerate(hf_rows(source))]
    else:
        rows = [check_row(r, where=f"{KEY}={source}: line {n}") for n, r in jsonl_rows(Path(source))]
    if not rows:
        raise ConfigError(f"{KEY}={source} has no rows; give a file with at least one preference.")
    return rows


def check_rejected(rejected: object, samples: object, temperature: object) -> None:
    """data.datamodule.rejected and its sampling settings."""
    if rejected not in REJECTED:
        raise ConfigError(f"data.datamodule.rejected must be one of {', '.join(REJECTED)}, got {rejected!r}.")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"data.datamodule.rejected_samples must be an integer >= 1, got {samples!r}.")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 < temperature < float("inf")
    ):
        raise ConfigError(f"data.datamodule.rejected_temperature must be a number > 0, got {temperature!r}.")


def wrong_answer(answer: int, rng: np.random.Generator) -> int:
    """A plausible wrong answer: the digits of a two-or-more-digit answer swapped (half the time, when that
    changes it), else the answer off by 1 to 3 (never negative, never the answer)."""
    digits = str(answer)
    if len(set(digits)) > 1 and rng.random() < 0.5:
        i = int(rng.integers(len(digits) - 1))
        swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        if swapped[0] != "0":
            return int(swapped)
    deltas = [d for d in (-3, -2, -1, 1, 2, 3) if answer + d >= 0]
    return answer + int(rng.choice(deltas))


def offline_rows(n: int, *, data_seed: int) -> list[dict]:
    """n arithmetic preferences (module docstring) from the offline word problems of `data_seed`."""
    from divlab.data.instruct_offline import arith_pool

    pool = arith_pool(data_seed)
    if n > len(pool):
        raise ConfigError(
            f"the offline preference set has {len(pool)} problems but n_train + n_val + n_test = {n}; "
            "lower data.datamodule.n_train."
        )
    rng = np.random.default_rng([data_seed, 4099])
    rows = []
    for e in pool[:n]:
        answer = int(e["answer"])
        wrong = wrong_answer(answer, rng)
        rejected = re.sub(rf"\b{answer}\b", str(wrong), e["response"], count=1)
        rows.append(
            {"prompt": e["prompt"], "chosen": e["response"], "rejected": rejected, "answer": e["answer"]}
        )
    return rows


def load_splits(source: str, *, n_train: int | None, n_val: int, n_test: int, data_seed: int) -> dict:
    """{split: [row]}: rows dealt by a data_seed permutation, the first n_test to test, the next n_val to val,
    the next n_train (None: the rest) to train."""
    if source == "offline":
        if n_train is None:
            raise ConfigError(
                "data.datamodule.n_train must be a number for source=offline (null: every row of a file)."
            )
        rows = offline_rows(n_test + n_val + n_train, data_seed=data_seed)
    else:
        rows = read_rows(source)
    need = n_test + n_val + (1 if n_train is None else n_train)
    if len(rows) < need:
        raise ConfigError(
            f"{KEY}={source} has {len(rows)} rows, fewer than n_test + n_val + n_train = {need}; lower "
            "data.datamodule.n_train (or null: every row not held out)."
        )
    order = np.random.default_rng(data_seed).permutation(len(rows)).tolist()
    end = len(rows) if n_train is None else need
    return {
        "test": [rows[i] for i in order[:n_test]],
        "val": [rows[i] for i in order[n_test : n_test + n_val]],
        "train": [rows[i] for i in order[n_test + n_val : end]],
    }


# ------------------------------------------------------------------ tensors
class PreferenceDataset(Dataset):
    """(prompt ids, chosen ids, rejected ids) per preference; collate_pairs makes the batch."""

    def __init__(self, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]]):
        self.rows = list(zip(prompts, chosen, rejected, strict=True))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple:
        return (*self.rows[i], i)


def pair_batch(items: list[tuple], *, pad_id: int) -> dict:
    """The 2B-row batch of the module docstring from (prompt, chosen, rejected, index) items."""
    prompts = [p for p, *_ in items] * 2
    answers = [c for _, c, _, _ in items] + [r for _, _, r, _ in items]
    return {**response_batch(prompts, answers, pad_id=pad_id), "index": torch.tensor([i for *_, i in items])}


class PreferenceSplits(pl.LightningDataModule):
    """What task=dpo reads of a preference data module (this one and divlab.data.preference_arith): the
    tokenised splits, their examples, the sampled-rejected hooks and the loaders. A subclass sets tokenizer,
    pad_id, eos_id, the size/sampling attributes and `_examples`, defines prompt_ids / response_ids, then
    calls `_tokenise()`."""

    kind = "preference"  # task=dpo reads this

    def _tokenise(self) -> None:
        """The PreferenceDataset of every split from `_examples` (checks rejected=sampled's answers)."""
        if self.rejected == "sampled":
            for split in SPLITS:
                if any(r["answer"] is None for r in self._examples[split]):
                    raise ConfigError(
                        f"data.datamodule.rejected=sampled needs an integer 'answer' on every row of {KEY}="
                        f"{self.source} (a sample is wrong when its final integer differs from it); add one "
                        "or use rejected=perturbed."
                    )
        self._splits, tied = {}, 0
        for split in SPLITS:
            rows = self._examples[split]
            prompts = [self.prompt_ids(r["prompt"]) for r in rows]
            chosen = [self.response_ids(r["chosen"]) for r in rows]
            rejected = [self.response_ids(r["rejected"]) for r in rows]
            tied += sum(c == r for c, r in zip(chosen, rejected))
            self._splits[split] = PreferenceDataset(prompts, chosen, rejected)
        if tied:
            log.warning(
                "%d preferences have the same chosen and rejected tokens after the cut to "
                "data.datamodule.max_response_tokens=%d: they carry no preference; raise it.",
                tied,
                self.max_response_tokens,
            )

    def prompt_digest(self, split: str) -> str:
        """sha256 of the split's tokenised prompts and answers (a cache key for sampled rejected answers)."""
        rows = [[p, e["answer"]] for (p, *_), e in zip(self._splits[split].rows, self._examples[split])]
        return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()

    def use_rejected(self, split: str, texts: list[str | None]) -> int:
        """Replace `split`'s rejected responses by `texts` (None: keep that row's); returns how many were kept."""
        rows, examples = self._splits[split].rows, self._examples[split]
        if len(texts) != len(rows):
            raise ValueError(f"use_rejected got {len(texts)} responses for {len(rows)} {split} preferences.")
        kept = 0
        for i, text in enumerate(texts):
            if text is None:
                kept += 1
                continue
            examples[i] = {**examples[i], "rejected": text}
            prompt, chosen, _ = rows[i]
            rows[i] = (prompt, chosen, self.response_ids(text))
        return kept

    def examples(self, split: str) -> list[dict]:
        """{"prompt", "chosen", "rejected", "answer"} per preference of `split`."""
        return self._examples[split]

    def dataset(self, split: str) -> PreferenceDataset:
        return self._splits[split]

    def _collate(self, items: list[tuple]) -> dict:
        return pair_batch(items, pad_id=self.pad_id)

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        data = self._splits["train"]
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            self._splits[split],
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self._collate,
        )


class PreferenceDataModule(PreferenceSplits):
    """Chat-templated preferences from the offline arithmetic set, a JSONL file or a Hugging Face data set."""

    def __init__(
        self,
        *,
        tokenizer,  # a transformers tokenizer with a chat template (the policy's)
        source: str = "offline",  # offline | a .jsonl path | hf:<dataset>[:<split>]
        n_train: int | None = 512,  # training preferences (file/hf: None = every row not held out)
        n_val: int = 64,  # validation preferences
        n_test: int = 64,  # held-out test preferences
        max_prompt_tokens: int = 96,  # longer templated prompts lose their first tokens
        max_response_tokens: int = 32,  # responses are cut to this many tokens, eos included
        batch_size: int = 8,  # preferences per batch and process (2x rows)
        data_seed: int = 0,  # which offline problems / which rows go to which split
        rejected: str = "perturbed",  # perturbed | sampled: the start model's own wrong answers (the task's)
        rejected_samples: int = 8,  # rejected=sampled: samples per prompt searched for a wrong answer
        rejected_temperature: float = 1.0,  # rejected=sampled: their sampling temperature
        num_workers: int = 0,  # DataLoader worker processes
        seed: int = 0,  # the batch order (per epoch); the runner passes it
    ):
        super().__init__()
        check_sizes(
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            batch_size=batch_size,
            max_prompt_tokens=max_prompt_tokens,
            max_response_tokens=max_response_tokens,
        )
        check_rejected(rejected, rejected_samples, rejected_temperature)
        self.rejected, self.rejected_samples = str(rejected), int(rejected_samples)
        self.rejected_temperature, self.data_seed = float(rejected_temperature), data_seed
        self.tokenizer = tokenizer
        self.pad_id, self.eos_id = check_tokenizer(tokenizer)
        self.source, self.seed = str(source), seed
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.max_len = max_prompt_tokens + max_response_tokens
        self.batch_size, self.num_workers = batch_size, num_workers
        self._examples = load_splits(
            self.source, n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed
        )
        self._tokenise()

    def prompt_ids(self, text: str) -> list[int]:
        out = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        ids = out["input_ids"] if isinstance(out, Mapping) else out  # transformers 5: a BatchEncoding
        return [int(i) for i in ids][-self.max_prompt_tokens :]

    def response_ids(self, text: str) -> list[int]:
        ids = [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        return ids[: self.max_response_tokens - 1] + [self.eos_id]
