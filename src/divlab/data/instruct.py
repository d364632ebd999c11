"""Instruction data for LLM distillation (`data=instruct`): chat-templated prompts and their responses.

Sources (`source`): `offline` (the embedded set of divlab.data.instruct_offline: arithmetic word
problems, Python-documentation questions, Shakespeare continuations; no download), a `.jsonl` file, or
`hf:<dataset>[:<split>]` (divlab.data.instruct_sources). A permutation seeded by `data_seed` deals a
file's rows to test, then val, then train, so the held-out prompts never train.

Each prompt is tokenised with the tokenizer's chat template (`add_generation_prompt=True`); prompts
longer than `max_prompt_tokens` lose their first tokens, responses are cut to `max_response_tokens`
tokens (eos included), and how many were cut is logged once. Batches use the layout of divlab's other
LM data (divlab.tasks.lm.action_mask: the loss covers positions prompt_len - 1 .. length - 2):

    tokens      (B, L)  the templated prompt, the response tokens, eos, then pad_id (right padding)
    prompt_len  (B,)    tokens of the templated prompt
    length      (B,)    real tokens (prompt + response + eos)
    index       (B,)    the row of examples(split) it came from

L is the longest row of the batch. `prompt_batches` gives the prompts alone, LEFT-padded, for
generation; `use_responses` swaps a split's responses for generated ones (sequence-level KD).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from divlab.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class PromptResponseDataset(Dataset):
    """Prompt + response + eos rows of one split, right-padded (module docstring)."""

    def __init__(self, prompts: Sequence[list[int]], responses: Sequence[list[int]], *, pad_id: int):
        rows = [p + r for p, r in zip(prompts, responses, strict=True)]
        self.tokens = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            self.tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        self.prompt_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        self.length = torch.tensor([len(r) for r in rows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {
            "tokens": self.tokens[i],
            "prompt_len": self.prompt_len[i],
            "length": self.length[i],
            "index": torch.tensor(i),
        }


def response_batch(prompts: list[list[int]], responses: list[list[int]], *, pad_id: int) -> dict:
    """Right-padded LM batch (tokens, prompt_len, length) of prompt + response rows."""
    rows = [p + r for p, r in zip(prompts, responses)]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return {
        "tokens": tokens,
        "prompt_len": torch.tensor([len(p) for p in prompts]),
        "length": torch.tensor([len(r) for r in rows]),
    }


def left_padded_batches(rows: Sequence[list[int]], *, batch_size: int, pad_id: int) -> Iterator[dict]:
    """Token rows in order, `batch_size` at a time, LEFT-padded for generation: input_ids (B, L),
    attention_mask (B, L), index (B,) into `rows`."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        yield {"input_ids": ids, "attention_mask": mask, "index": torch.arange(start, start + len(chunk))}


def collate_trimmed(items: list[dict]) -> dict:
    """Stack a batch and drop the padding columns that no row of it uses."""
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    batch["tokens"] = batch["tokens"][:, : int(batch["length"].max())]
    return batch


class InstructDataModule(pl.LightningDataModule):
    """Chat-templated prompt/response pairs from the offline set, a JSONL file or a Hugging Face data set."""

    kind = "instruct"  # task=lm_distill reads this

    def __init__(
        self,
        *,
        tokenizer,  # a transformers tokenizer with a chat template
        source: str = "offline",  # offline | a .jsonl path | hf:<dataset>[:<split>]
        n_train: int | None = 512,  # training examples (file/hf: None = every row not held out)
        n_val: int = 64,  # validation examples
        n_test: int = 64,  # held-out test examples
        max_prompt_tokens: int = 96,  # longer templated prompts lose their first tokens
        max_response_tokens: int = 48,  # responses are cut to this many tokens, eos included
        batch_size: int = 8,  # per process
        data_seed: int = 0,  # which offline examples / which rows go to which split
        num_workers: int = 0,  # DataLoader worker processes
        seed: int = 0,
    ):  # fixes the batch order (per epoch); the runner passes it
        super().__init__()
        check_sizes(
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            batch_size=batch_size,
            max_prompt_tokens=max_prompt_tokens,
            max_response_tokens=max_response_tokens,
        )
        self.tokenizer = tokenizer
        self.pad_id, self.eos_id = check_tokenizer(tokenizer)
        self.vocab_size = len(tokenizer)
        self.source, self.data_seed, self.seed = str(source), data_seed, seed
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.max_len = max_prompt_tokens + max_response_tokens
        self.batch_size, self.num_workers = batch_size, num_workers
        self._examples = load_examples(
            self.source, n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed
        )
        self._prompt_ids, self._response_ids, self._splits = {}, {}, {}
        cut_prompts = cut_responses = total = 0
        for split in SPLITS:
            examples = self._examples[split]
            prompts = [self.prompt_ids(e["messages"]) for e in examples]
            cut_prompts += sum(len(p) > max_prompt_tokens for p in prompts)
            self._prompt_ids[split] = [p[-max_prompt_tokens:] for p in prompts]
            cut_responses += self._set_responses(split, [e["response"] for e in examples])
            total += len(examples)
        self.truncated = {"prompts": cut_prompts, "responses": cut_responses}
        if cut_prompts or cut_responses:
            log.warning(
                "%d of %d prompts were longer than data.datamodule.max_prompt_tokens=%d and lost their "
                "first tokens; %d responses were cut to data.datamodule.max_response_tokens=%d (eos "
                "included).",
                cut_prompts,
                total,
                max_prompt_tokens,
                cut_responses,
                max_response_tokens,
            )

    # ------------------------------------------------------------------ tokenisation
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat-templated prompt (generation prompt included), before truncation."""
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, Mapping) else out  # transformers 5 returns a BatchEncoding
        return [int(i) for i in ids]

    def response_ids(self, text: str) -> list[int]:
        """The response's tokens then eos, before truncation."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]] + [self.eos_id]

    def _set_responses(self, split: str, texts: Sequence[str]) -> int:
        """Tokenise a split's responses, cut them to max_response_tokens (eos kept last), rebuild its
        dataset; returns how many were cut."""
        ids, cut = [], 0
        for text in texts:
            r = self.response_ids(text)
            if len(r) > self.max_response_tokens:
                r, cut = r[: self.max_response_tokens - 1] + [self.eos_id], cut + 1
            ids.append(r)
        self._response_ids[split] = ids
        self._splits[split] = PromptResponseDataset(self._prompt_ids[split], ids, pad_id=self.pad_id)
        return cut

    # ------------------------------------------------------------------ the interface tasks use
    def examples(self, split: str) -> list[dict]:
        """{"prompt", "response", "reference", "group", "answer", "messages"} per row of `split`; "response" is
        what trains (replaced by use_responses), "reference" the data's own response (never replaced)."""
        return self._examples[_check_split(split)]

    def use_responses(self, split: str, responses: Sequence[str]) -> None:
        """Replace the responses of `split` (e.g. the teacher's, for sequence-level KD) and re-tokenise it."""
        examples = self._examples[_check_split(split)]
        if len(responses) != len(examples) or not all(isinstance(r, str) for r in responses):
            raise ConfigError(
                f"use_responses({split!r}) needs one string per example ({len(examples)}), got "
                f"{len(responses)} items; regenerate the cached responses."
            )
        for example, text in zip(examples, responses, strict=True):
            example["response"] = text
        cut = self._set_responses(split, responses)
        if cut:
            log.warning(
                "%d of %d new %s responses were cut to data.datamodule.max_response_tokens=%d (eos "
                "included).",
                cut,
                len(responses),
                split,
                self.max_response_tokens,
            )

    def prompt_batches(self, split: str, *, batch_size: int) -> Iterator[dict]:
        """The prompts of `split` in order, LEFT-padded with pad_id: input_ids (B, Lp), attention_mask (B, Lp),
        index (B,) into examples(split)."""
        yield from left_padded_batches(
            self._prompt_ids[_check_split(split)], batch_size=batch_size, pad_id=self.pad_id
        )

    def prompt_digest(self, split: str) -> str:
        """sha256 of the split's tokenised prompts: a cache key for generated responses that changes whenever
        the prompts do (a new file, another tokenizer or template, another data_seed)."""
        ids = json.dumps(self._prompt_ids[_check_split(split)], separators=(",", ":"))
        return hashlib.sha256(ids.encode()).hexdigest()

    def dataset(self, split: str) -> PromptResponseDataset:
        return self._splits[_check_split(split)]

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        # divlab.data.loaders.seeded_train_loader's sampler (order = f(seed, epoch), sharded per rank), with
        # the trimming collate
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = DistributedSampler(
            self._splits["train"], num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return DataLoader(
            self._splits["train"],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_trimmed,
            persistent_workers=self.num_workers > 0,
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
            collate_fn=collate_trimmed,
            persistent_workers=self.num_workers > 0,
        )


def check_sizes(*, n_train, n_val, n_test, batch_size, max_prompt_tokens, max_response_tokens) -> None:
    """The split sizes and token budgets of a prompt/response data module (n_train None: every row of a file)."""
    for key, value, low in (
        ("n_val", n_val, 1),
        ("n_test", n_test, 1),
        ("batch_size", batch_size, 1),
        ("max_prompt_tokens", max_prompt_tokens, 1),
        ("max_response_tokens", max_response_tokens, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"data.datamodule.{key} must be an integer >= {low}, got {value!r}.")
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1):
        raise ConfigError(
            f"data.datamodule.n_train must be an integer >= 1 (or null for a file), got {n_train!r}."
        )


def check_tokenizer(tokenizer) -> tuple[int, int]:
    """(pad_id, eos_id) of a chat tokenizer; pad_id is the eos id when the tokenizer has no pad token
    (SmolLM2's pad is its eos anyway); padding is never a target, so the choice does not change a loss."""
    if not callable(getattr(tokenizer, "apply_chat_template", None)) or not getattr(
        tokenizer, "chat_template", None
    ):
        raise ConfigError(
            "data.datamodule.tokenizer has no chat template; use the tokenizer of an instruct model "
            "(student.model) or set tokenizer.chat_template."
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            "data.datamodule.tokenizer has no eos token; use a tokenizer whose eos_token is set."
        )
    pad = tokenizer.pad_token_id
    return (eos if pad is None else int(pad)), int(eos)


def load_examples(
    source: str, *, n_train: int | None, n_val: int, n_test: int, data_seed: int
) -> dict[str, list[dict]]:
    """{split: [example]} from the offline set or from a file / data set (rows dealt by a data_seed permutation:
    the first n_test to test, the next n_val to val, the next n_train (None: all the rest) to train)."""
    if source == "offline":
        if n_train is None:
            raise ConfigError(
                "data.datamodule.n_train must be a number for source=offline (null means every row "
                "of a file)."
            )
        from divlab.data.instruct_offline import build_offline

        splits = build_offline(n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed)
        for examples in splits.values():
            for e in examples:
                e["messages"] = [{"role": "user", "content": e["prompt"]}]
    else:
        from divlab.data.instruct_sources import read_rows

        rows = read_rows(source)
        need = n_test + n_val + (1 if n_train is None else n_train)
        if len(rows) < need:
            raise ConfigError(
                f"data.datamodule.source={source} has {len(rows)} rows, fewer than n_test + n_val + "
                f"n_train = {need}; lower data.datamodule.n_train (or null: every row not held out)."
            )
        order = np.random.default_rng(data_seed).permutation(len(rows)).tolist()
        end = len(rows) if n_train is None else n_test + n_val + n_train
        splits = {
            "test": [rows[i] for i in order[:n_test]],
            "val": [rows[i] for i in order[n_test : n_test + n_val]],
            "train": [rows[i] for i in order[n_test + n_val : end]],
        }
    for examples in splits.values():
        for e in examples:
            e["reference"] = e["response"]
    return splits


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    return split
