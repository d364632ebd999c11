"""Prompt/response rows from a JSONL file or a Hugging Face data set, for `divlab.data.instruct`.

`read_rows(source)` returns one normalised dict per row:
{"messages": the prompt as chat messages, "prompt": the last prompt message's text, "response": str,
 "group": str, "answer": str | None}. Accepted row shapes:

- `{"prompt": str, "response": str}` (optional "group"; optional integer "answer" for exact match);
- `{"messages": [{"role", "content"}, ...]}` ending with an assistant message: the earlier messages
  (system, user, earlier turns) form the prompt, the last assistant message is the response;
- `{"instruction", "context", "response"}`: databricks-dolly-15k's fields; prompt = instruction, then
  the context after a blank line when it is not empty.

`hf:<dataset>[:<split>]` goes through `datasets.load_dataset(dataset, split=split)` (split "train" by
default): a Hub id for users with the network or its cache, or a local folder of .jsonl/.json/.csv
files. Every bad row raises ConfigError in one sentence naming data.datamodule.source and the row's
line (file) or index (data set).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from divlab.errors import ConfigError

__all__ = ["normalise_row", "read_rows"]

KEY = "data.datamodule.source"


def read_rows(source: str) -> list[dict]:
    """The normalised rows of a .jsonl file or of `hf:<dataset>[:<split>]`, in file order."""
    if source.startswith("hf:"):
        rows = [normalise_row(row, where=f"{KEY}={source}: row {i}") for i, row in enumerate(hf_rows(source))]
    else:
        rows = [normalise_row(row, where=f"{KEY}={source}: line {n}") for n, row in jsonl_rows(Path(source))]
    if not rows:
        raise ConfigError(
            f"{KEY}={source} has no rows; give a file or data set with at least one prompt/response pair."
        )
    return rows


def jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    if not path.is_file():
        raise ConfigError(
            f"{KEY}={path} is neither offline, hf:<dataset>[:<split>] nor an existing .jsonl file."
        )
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are allowed
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{KEY}={path}: line {n} is not valid JSON ({err.msg}); fix or remove it."
                ) from None
            yield n, row


def hf_rows(source: str) -> Iterable[Mapping]:
    dataset, _, split = source[3:].partition(":")
    try:
        import datasets  # only for user-named Hugging Face data sets (may need the network or its cache)
    except ImportError:
        raise ConfigError(f"{KEY}={source} needs the package datasets; pip install datasets.") from None
    try:
        return datasets.load_dataset(dataset, split=split or "train")
    except Exception as err:
        raise ConfigError(
            f"{KEY}={source} could not be loaded by datasets.load_dataset ({type(err).__name__}: "
            f"{err}); check the name and split or download it first."
        ) from None


def normalise_row(row: object, *, where: str) -> dict:
    """One row in any accepted shape (module docstring) as {"messages", "prompt", "response", "group", "answer"};
    `where` starts every error message ("data.datamodule.source=rows.jsonl: line 3")."""
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where} is a {type(row).__name__}, not a JSON object with prompt and response.")
    if "messages" in row:
        messages = row["messages"]
        ok = (
            isinstance(messages, list)
            and len(messages) >= 2
            and all(
                isinstance(m, Mapping)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in messages
            )
        )
        if not ok or messages[-1]["role"] != "assistant":
            raise ConfigError(
                f"{where} has a messages field that is not a list of at least two "
                "{role, content} messages ending with an assistant message."
            )
        prompt_messages = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        prompt, response = prompt_messages[-1]["content"], messages[-1]["content"]
    elif "instruction" in row and "response" in row:  # databricks-dolly-15k
        context = row.get("context") or ""
        prompt = _text(row, "instruction", where) + (f"\n\n{context}" if str(context).strip() else "")
        response = _text(row, "response", where)
        prompt_messages = [{"role": "user", "content": prompt}]
    else:
        prompt, response = _text(row, "prompt", where), _text(row, "response", where)
        prompt_messages = [{"role": "user", "content": prompt}]
    answer = row.get("answer")
    if answer is not None and not (
        isinstance(answer, int)
        and not isinstance(answer, bool)
        or isinstance(answer, str)
        and re.fullmatch(r"-?\d+", answer.strip())
    ):
        raise ConfigError(
            f"{where} has an answer {answer!r} that is not an integer (exact match compares the "
            "final integer of a response); remove it or write an integer."
        )
    group = row.get("group", row.get("category"))
    return {
        "messages": prompt_messages,
        "prompt": prompt,
        "response": response,
        "group": str(group) if group is not None else "data",
        "answer": str(answer).strip() if answer is not None else None,
    }


def _text(row: Mapping, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        state = "is missing" if field not in row else "is not a non-empty string"
        raise ConfigError(
            f"{where} has no usable {field!r} field (it {state}); each row needs prompt and "
            "response (or messages)."
        )
    return value
