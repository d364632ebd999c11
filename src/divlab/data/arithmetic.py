"""Generated arithmetic in a configurable base: `<bos>a+b=c<eos>` and `<bos>a-b=c<eos>` (offline).

The add-or-subtract-in-base task that SequenceMatch (Cundy & Ermon 2024) evaluates on: operands
have 1..n_digits digits (no leading zeros), the answer is written most significant digit first
(`reverse_answer=true`: least significant first), a negative difference starts with "-". The alphabet is the base's digits then "+-=", read by a
`CharTokenizer` (specials `<pad> <bos> <eos> <bs>` follow), or by a Hugging Face student's tokenizer
(`tokenizer=` a `divlab.data.hf_tokenizer.HFTokenizer`: prompt and answer encoded separately). Problems are drawn without
replacement, so train, val and test never share one; `data_seed` fixes them.

Every example is a dict of tensors, padded to one length with `<pad>`:

    tokens      (L,)  `<bos> a op b = answer <eos>` then padding
    prompt_len  ()    length of `<bos> a op b =` (the part a model is given and never deletes)
    length      ()    number of real tokens
    ood_tokens  (L,)  (val/test only) the prompt, a correct answer prefix, then one wrong digit
    ood_len     ()    its number of real tokens

The model's actions are tokens[prompt_len:length]; `lm_targets` turns this layout into
next-token targets for the LM tasks.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Dataset

from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.data.tokenizers import CharTokenizer
from divlab.errors import ConfigError

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
OPS = ("+", "-")


def to_base(value: int, base: int) -> str:
    """`value` written in `base` (digits 0-9 then a-z), with a leading "-" when negative."""
    if value < 0:
        return "-" + to_base(-value, base)
    out = ""
    while True:
        value, digit = divmod(value, base)
        out = DIGITS[digit] + out
        if value == 0:
            return out


def arithmetic_tokenizer(base: int) -> CharTokenizer:
    """Digits of `base`, then "+", "-", "=" (content ids 0 .. base + 2), then the four specials."""
    return CharTokenizer(alphabet=DIGITS[:base] + "+-=")


def draw_problems(n: int, *, base: int, n_digits: int, ops: str, rng: np.random.Generator) -> np.ndarray:
    """n distinct problems (a, b, op index) with a, b < base**n_digits, drawn uniformly without replacement."""
    m = base**n_digits
    space = m * m * len(ops)
    if n > space:
        raise ConfigError(
            f"data.datamodule asks for {n} problems but base={base}, n_digits={n_digits} and "
            f"ops={ops!r} have only {space}; raise data.datamodule.n_digits"
        )
    codes = rng.choice(space, size=n, replace=False)
    return np.stack([codes // (m * len(ops)), (codes // len(ops)) % m, codes % len(ops)], axis=1)


def problem_text(
    a: int, b: int, op: str, base: int, *, reverse: bool = False, width: int = 0
) -> tuple[str, str]:
    """("a+b=", "answer") in `base`; with `reverse` the answer's digits come least significant first
    (after the sign), which a small model learns in fewer steps (carries flow left to right); `width` > 0
    writes both operands with leading zeros to that many digits (aligned digits: also fewer steps)."""
    value = a + b if op == "+" else a - b
    answer = to_base(value, base)
    if reverse:
        sign, digits = ("-", answer[1:]) if answer.startswith("-") else ("", answer)
        answer = sign + digits[::-1]
    return f"{to_base(a, base).zfill(width)}{op}{to_base(b, base).zfill(width)}=", answer


def ood_prefix(answer: str, *, base: int, rng: np.random.Generator) -> str:
    """A correct prefix of `answer` (length k, uniform in 0 .. len-1) then one wrong digit at position k.

    The wrong digit is drawn uniformly from the base's digits other than the correct one (when the
    correct character is "-", from all digits). A model can only reach the answer by deleting it.
    """
    k = int(rng.integers(len(answer)))
    choices = [d for d in DIGITS[:base] if d != answer[k]]
    return answer[:k] + choices[int(rng.integers(len(choices)))]


class ArithmeticDataset(Dataset):
    """Padded token tensors of a list of problems (see the module docstring for the fields)."""

    def __init__(
        self,
        problems: np.ndarray,
        *,
        tokenizer,
        base: int,
        ops: str,
        max_len: int,
        reverse: bool,
        ood_rng: np.random.Generator | None,
        width: int = 0,
    ):
        self.texts = []
        n = len(problems)
        self.tokens = torch.full((n, max_len), tokenizer.pad_id, dtype=torch.long)
        self.prompt_len = torch.zeros(n, dtype=torch.long)
        self.length = torch.zeros(n, dtype=torch.long)
        self.ood_tokens = torch.full((n, max_len), tokenizer.pad_id, dtype=torch.long) if ood_rng else None
        self.ood_len = torch.zeros(n, dtype=torch.long)
        for i, (a, b, op) in enumerate(problems.tolist()):
            prompt, answer = problem_text(a, b, ops[op], base, reverse=reverse, width=width)
            self.texts.append((prompt, answer))
            p = tokenizer.encode(prompt, add_bos=True)
            ids = p + tokenizer.encode(answer, add_eos=True)
            if len(ids) > max_len:
                raise ConfigError(
                    f"the tokenizer encodes {prompt}{answer} in {len(ids)} tokens, more than the "
                    f"{max_len} characters it has; use a tokenizer that adds no prefix tokens"
                )
            self.tokens[i, : len(ids)] = torch.tensor(ids)
            self.prompt_len[i], self.length[i] = len(p), len(ids)
            if ood_rng is not None:
                ood = p + tokenizer.encode(ood_prefix(answer, base=base, rng=ood_rng))
                self.ood_tokens[i, : len(ood)] = torch.tensor(ood)
                self.ood_len[i] = len(ood)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        item = {"tokens": self.tokens[i], "prompt_len": self.prompt_len[i], "length": self.length[i]}
        if self.ood_tokens is not None:
            item.update(ood_tokens=self.ood_tokens[i], ood_len=self.ood_len[i])
        return item


class ArithmeticDataModule(pl.LightningDataModule):
    """a+b and a-b in `base` with up to `n_digits`-digit operands; disjoint train/val/test problems."""

    def __init__(
        self,
        *,
        base: int = 10,  # number base, 2..36
        n_digits: int = 2,  # most digits of an operand
        ops: str = "+-",  # which operations: "+", "-" or "+-"
        reverse_answer: bool = False,  # answer digits least significant first
        pad_operands: bool = False,  # operands written with leading zeros to n_digits digits
        n_train: int = 8000,  # training problems
        n_val: int = 500,  # validation problems
        n_test: int = 1000,  # test problems (each also gives one OOD prefix)
        batch_size: int = 128,  # per process
        data_seed: int = 0,  # fixes the problems and the OOD prefixes
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
        tokenizer=None,
    ):  # None: the base's CharTokenizer; or an HFTokenizer (HF students)
        super().__init__()
        if not 2 <= base <= len(DIGITS):
            raise ConfigError(f"data.datamodule.base must be in 2..{len(DIGITS)}, got {base}")
        if n_digits < 1:
            raise ConfigError(f"data.datamodule.n_digits must be >= 1, got {n_digits}")
        if not ops or set(ops) - set(OPS) or len(set(ops)) != len(ops):
            raise ConfigError(f"data.datamodule.ops must be '+', '-' or '+-', got {ops!r}")
        if min(n_train, n_val, n_test) < 1:
            raise ConfigError("data.datamodule.n_train, n_val and n_test must all be >= 1")
        self.base, self.n_digits, self.ops, self.reverse_answer = base, n_digits, ops, reverse_answer
        self.pad_operands = pad_operands
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size, self.data_seed, self.seed, self.num_workers = (
            batch_size,
            data_seed,
            seed,
            num_workers,
        )
        self.tokenizer = arithmetic_tokenizer(base) if tokenizer is None else tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        # <bos> a op b = [-] answer <eos>: the answer has at most n_digits + 1 characters
        self.max_len = 1 + 2 * n_digits + 2 + (n_digits + 1) + 1
        self._splits = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        rng = np.random.default_rng(self.data_seed)
        problems = draw_problems(
            self.n_train + self.n_val + self.n_test,
            base=self.base,
            n_digits=self.n_digits,
            ops=self.ops,
            rng=rng,
        )
        bounds = np.cumsum([0, self.n_train, self.n_val, self.n_test])
        common = dict(
            tokenizer=self.tokenizer,
            base=self.base,
            ops=self.ops,
            max_len=self.max_len,
            reverse=self.reverse_answer,
            width=self.n_digits if self.pad_operands else 0,
        )
        self._splits = {
            name: ArithmeticDataset(
                problems[lo:hi],
                ood_rng=None if name == "train" else np.random.default_rng([self.data_seed, i]),
                **common,
            )
            for i, (name, lo, hi) in enumerate(zip(("train", "val", "test"), bounds[:-1], bounds[1:]))
        }

    def dataset(self, split: str) -> ArithmeticDataset:
        self.setup()
        return self._splits[split]

    def content_ids(self) -> list[int]:
        """The non-special token ids of the train split (SequenceMatch's noise tokens under an HF tokenizer)."""
        ids = torch.unique(self.dataset("train").tokens).tolist()
        return [i for i in ids if not self.tokenizer.is_special(i)]

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader
