"""A Hugging Face tokenizer behind divlab's `Tokenizer` interface, so the LM data modules (arithmetic, text
windows, mixture) can feed a Hugging Face student (`student=smollm2_*`).

The data config names it (see conf/experiment/lm/arith_smollm2.yaml):

    data.datamodule.tokenizer:
      _target_: divlab.data.hf_tokenizer.HFTokenizer
      backspace: true
      tokenizer: {_target_: divlab.models.hf.load_tokenizer, _recursive_: false, model: ${student.model}, ...}

so the transformers tokenizer object arrives built by Hydra and this module imports no model. Ids:

    <bos>  the tokenizer's bos token (its eos token when it has none)
    <eos>  its eos token
    <pad>  its pad token when that differs from eos; else its unk token when that differs from eos and bos
           (SmolLM2: <|endoftext|>); else a new special token "<pad>" is added (the tasks never sample <pad>)
    <bs>   (backspace=True) a new special token "<bs>" (SequenceMatch, Cundy & Ermon 2024) with the next free
           id, so the model's embedding must grow to `vocab_size` rows (the LM tasks resize it)

`encode` never adds the tokenizer's own specials; `decode` skips every special (and applies `<bs>` as a
deletion of the previous token when asked), like divlab's byte and char tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from divlab.errors import ConfigError

__all__ = ["BACKSPACE", "HFTokenizer"]

BACKSPACE = "<bs>"


class HFTokenizer:
    """divlab's tokenizer interface (encode, decode, pad/bos/eos/bs ids, vocab_size) over a transformers one."""

    kind = "hf"

    def __init__(
        self,
        *,
        tokenizer: Any,  # a transformers PreTrainedTokenizer(Fast), e.g. from divlab.models.hf.load_tokenizer
        backspace: bool = True,  # add "<bs>" as a new special token (task=lm and task=seqmatch use it)
    ) -> None:
        if not hasattr(tokenizer, "add_special_tokens") or not hasattr(tokenizer, "convert_tokens_to_ids"):
            raise ConfigError(
                f"data.datamodule.tokenizer.tokenizer must build a transformers tokenizer, got "
                f"{type(tokenizer).__name__}"
            )
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "data.datamodule.tokenizer: the Hugging Face tokenizer defines no eos token; "
                "use a model whose tokenizer does"
            )
        self.n_content = len(tokenizer)  # ids the tokenizer had before divlab added anything
        new = []
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            unk = tokenizer.unk_token_id  # <pad> must differ from <eos>: the tasks never sample <pad>
            if unk is not None and unk not in (tokenizer.eos_token_id, tokenizer.bos_token_id):
                tokenizer.pad_token = tokenizer.unk_token
            else:
                new.append("<pad>")
        if backspace:
            new.append(BACKSPACE)
        missing = [t for t in new if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": missing}, replace_extra_special_tokens=False
            )
        if "<pad>" in new:
            tokenizer.pad_token = "<pad>"
        self.hf = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = int(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.bs_id = int(tokenizer.convert_tokens_to_ids(BACKSPACE)) if backspace else None
        self.vocab_size = len(tokenizer)
        self._special = set(int(i) for i in tokenizer.all_special_ids) | {
            self.pad_id,
            self.bos_id,
            self.eos_id,
        }
        if backspace:
            self._special.add(self.bs_id)

    @property
    def special_ids(self) -> tuple[int, int, int, int | None]:
        """(pad_id, bos_id, eos_id, bs_id)."""
        return self.pad_id, self.bos_id, self.eos_id, self.bs_id

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._special

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text` (no specials of the tokenizer's own), optionally wrapped in <bos> ... <eos>."""
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        return [self.bos_id] * add_bos + list(ids) + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int], *, apply_backspace: bool = False) -> str:
        """Text of `ids`, specials skipped; with `apply_backspace` each <bs> deletes the previous kept token."""
        kept: list[int] = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size}).")
            if token_id == self.bs_id:
                if apply_backspace and kept:
                    kept.pop()
            elif token_id not in self._special:
                kept.append(token_id)
        return self.hf.decode(kept)

    def id_to_token(self, token_id: int) -> str:
        return self.hf.convert_ids_to_tokens(int(token_id))

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able description (checkpoints store it; the tokenizer itself comes from the model's source)."""
        return {
            "kind": self.kind,
            "name": getattr(self.hf, "name_or_path", ""),
            "vocab_size": self.vocab_size,
            "special_ids": list(self.special_ids),
        }

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, bs_id={self.bs_id})"
