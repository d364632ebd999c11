"""Arithmetic preferences for task=dpo with a divlab GPT policy (`data=preference_arith`; offline, no download).

The problems are those of divlab.data.arithmetic (`arith`: the settings of an ArithmeticDataModule, the same
data the policy's start model is trained on by MLE; task=dpo trains that start, see dpo.init). A preference is

    prompt   = the problem as the GPT reads it, "<bos>07+23="  (the arithmetic data's own prompt tokens)
    chosen   = its answer, written as the data writes it ("03" with reverse_answer: least significant first)
    rejected = a wrong answer: with rejected=sampled (the default here) the first of `rejected_samples` samples
               of the start model that is a well-formed number other than the answer (divlab.provision.rejected);
               a prompt with no such sample keeps a perturbed answer (the value off by 1 to 3 or by 10, written
               the same way), counted and logged as test/rejected_fallback; rejected=perturbed keeps those.

Splits: the first n_train / n_val / n_test problems of the arithmetic train / val / test splits (the held-out
preferences are problems the start model never trained on). An answer is correct when the generated text IS
the answer string (`correct`; "3" is not "03"), wrong when it is another well-formed number (`wrong`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from divlab.data.arithmetic import DIGITS, ArithmeticDataModule
from divlab.data.instruct import SPLITS, check_sizes
from divlab.data.preference import PreferenceSplits, check_rejected
from divlab.errors import ConfigError

ARITH_TARGET = "divlab.data.arithmetic.ArithmeticDataModule"


def read_answer(text: str, *, base: int, reverse: bool) -> int:
    """The value of an answer as the arithmetic data writes it (sign first, digits reversed with `reverse`)."""
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    return sign * int(digits[::-1] if reverse else digits, base)


def write_answer(value: int, *, base: int, reverse: bool) -> str:
    """read_answer's inverse (divlab.data.arithmetic.problem_text's format)."""
    digits = np.base_repr(abs(value), base).lower()
    return ("-" if value < 0 else "") + (digits[::-1] if reverse else digits)


def perturbed_answer(answer: str, rng: np.random.Generator, *, base: int, reverse: bool) -> str:
    """A plausible wrong answer: the value off by 1 to 3 or by 10, written the same way."""
    value = read_answer(answer, base=base, reverse=reverse)
    return write_answer(value + int(rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])), base=base, reverse=reverse)


class ArithPreferenceDataModule(PreferenceSplits):
    """Preferences on generated a+b / a-b problems for a GPT policy (module docstring)."""

    def __init__(
        self,
        *,
        arith: Mapping,  # ArithmeticDataModule settings (conf/data/arith.yaml's datamodule keys, no _target_)
        n_train: int = 1024,  # training preferences (the first problems of the arithmetic train split)
        n_val: int = 128,  # validation preferences (arithmetic val split)
        n_test: int = 500,  # held-out test preferences (arithmetic test split)
        batch_size: int = 32,  # preferences per batch and process (2x rows)
        rejected: str = "sampled",  # sampled: the start model's own wrong answers | perturbed
        rejected_samples: int = 8,  # rejected=sampled: samples per prompt searched for a wrong answer
        rejected_temperature: float = 1.0,  # rejected=sampled: their sampling temperature
        num_workers: int = 0,  # DataLoader worker processes
        seed: int = 0,  # the batch order (per epoch); the runner passes it
    ):
        super().__init__()
        if not isinstance(arith, Mapping) or "_target_" in arith:
            raise ConfigError(
                "data.datamodule.arith must be a mapping of ArithmeticDataModule settings (base, n_digits, ops, "
                "...) without _target_"
            )
        self.arith = {k: v for k, v in dict(arith).items() if k != "seed"}
        problems = ArithmeticDataModule(**self.arith, seed=seed)
        self.base, self.reverse = problems.base, problems.reverse_answer
        self.tokenizer, self.vocab_size, self.max_len = (
            problems.tokenizer,
            problems.vocab_size,
            problems.max_len,
        )
        self.pad_id, self.eos_id = self.tokenizer.pad_id, self.tokenizer.eos_id
        self.max_prompt_tokens = 2 + 2 * problems.n_digits + 1  # <bos> a op b =
        self.max_response_tokens = problems.n_digits + 2  # [-] digits <eos>
        check_sizes(
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            batch_size=batch_size,
            max_prompt_tokens=self.max_prompt_tokens,
            max_response_tokens=self.max_response_tokens,
        )
        check_rejected(rejected, rejected_samples, rejected_temperature)
        self.rejected, self.rejected_samples = str(rejected), int(rejected_samples)
        self.rejected_temperature, self.data_seed = float(rejected_temperature), problems.data_seed
        self.source, self.seed = "arith", seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self._examples = {}
        for i, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test))):
            texts = problems.dataset(split).texts
            if n > len(texts):
                raise ConfigError(
                    f"data.datamodule.n_{split}={n} is more than the {len(texts)} problems of the arithmetic "
                    f"{split} split; lower it or raise data.datamodule.arith.n_{split}"
                )
            rng = np.random.default_rng([problems.data_seed, 4099, i])
            self._examples[split] = [
                {
                    "prompt": p,
                    "chosen": a,
                    "rejected": perturbed_answer(a, rng, base=self.base, reverse=self.reverse),
                    "answer": a,
                }
                for p, a in texts[:n]
            ]
        self._tokenise()

    def start_data(self) -> dict:
        """The data config the start model trains on by MLE (task=lm): these problems as `data=arith`."""
        return {"name": "arith", "datamodule": {"_target_": ARITH_TARGET, **self.arith}}

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_bos=True)

    def response_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)[: self.max_response_tokens - 1] + [self.eos_id]

    def correct(self, text: str, answer: str) -> bool:
        """The generated text is the answer string itself."""
        return text.strip() == answer

    def wrong(self, text: str, answer: str) -> bool:
        """A well-formed number of the base (optional "-", then digits) other than the answer."""
        text = text.strip()
        return re.fullmatch(rf"-?[{DIGITS[: self.base]}]+", text) is not None and text != answer
