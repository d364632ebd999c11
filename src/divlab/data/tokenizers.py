"""Byte and character tokenisers with the special tokens of the language-model tasks.

Both tokenisers number their content tokens first and the four specials after them:

    <pad>  padding, never a training target
    <bos>  beginning of sequence
    <eos>  end of sequence
    <bs>   backspace: deletes the previous token (SequenceMatch, Cundy & Ermon 2024)

`encode` never produces a special except the optional `<bos>`/`<eos>`; the text "<bs>" is
encoded as its four characters. A tokeniser's `state_dict()` is a plain JSON-able dict, so a
checkpoint that stores it loads with `torch.load(..., weights_only=True)`;
`tokenizer_from_state_dict` rebuilds either kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["SPECIAL_TOKENS", "ByteTokenizer", "CharTokenizer", "Tokenizer", "tokenizer_from_state_dict"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<bs>")


class Tokenizer:
    """Shared special-token bookkeeping and decoding; subclasses map content tokens to text."""

    kind = ""  # name stored in the state dict

    def __init__(self, *, n_content: int) -> None:
        self.n_content = n_content  # content tokens take ids 0 .. n_content - 1
        self.pad_id, self.bos_id, self.eos_id, self.bs_id = range(n_content, n_content + len(SPECIAL_TOKENS))
        self.vocab_size = n_content + len(SPECIAL_TOKENS)

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        """(pad_id, bos_id, eos_id, bs_id)."""
        return self.pad_id, self.bos_id, self.eos_id, self.bs_id

    def is_special(self, token_id: int) -> bool:
        return token_id >= self.n_content

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally wrapped in `<bos>` ... `<eos>`."""
        ids = self._encode_content(text)
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int], *, apply_backspace: bool = False) -> str:
        """Text of `ids`; specials are skipped.

        With `apply_backspace`, each `<bs>` deletes the previous content token that is still
        there (a `<bs>` with nothing before it is a no-op); otherwise `<bs>` is skipped like the
        other specials.
        """
        content: list[int] = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size}).")
            if token_id < self.n_content:
                content.append(token_id)
            elif token_id == self.bs_id and apply_backspace and content:
                content.pop()
        return self._decode_content(content)

    def id_to_token(self, token_id: int) -> str:
        """Readable form of one id: its text, or the special's name."""
        if token_id >= self.n_content:
            return SPECIAL_TOKENS[token_id - self.n_content]
        return self._decode_content([token_id])

    # subclasses implement these three
    def _encode_content(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_content(self, ids: list[int]) -> str:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255 are byte values; specials are 256..259.

    A `<bs>` deletes one byte, so deleting part of a multi-byte character decodes to U+FFFD.
    """

    kind = "byte"

    def __init__(self) -> None:
        super().__init__(n_content=256)

    def _encode_content(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode_content(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "specials": list(SPECIAL_TOKENS)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ByteTokenizer:
        _check_state(state, cls.kind)
        return cls()


class CharTokenizer(Tokenizer):
    """One id per character of an alphabet, in the alphabet's order; specials follow.

    Build it from an explicit alphabet (`CharTokenizer(alphabet="0123456789+-=")` gives each
    digit its own value as id) or from a text (`CharTokenizer.from_text(text)`, sorted
    characters). Encoding a character outside the alphabet raises ValueError.
    """

    kind = "char"

    def __init__(
        self,
        *,
        alphabet: str | Sequence[str],  # the characters, each once, in id order
    ) -> None:
        chars = list(alphabet)
        if not chars:
            raise ValueError("CharTokenizer needs a non-empty alphabet.")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"alphabet entries must be single characters, got {bad[:5]!r}.")
        duplicates = sorted(c for c, n in Counter(chars).items() if n > 1)
        if duplicates:
            raise ValueError(f"alphabet repeats the characters {duplicates!r}.")
        super().__init__(n_content=len(chars))
        self.alphabet = "".join(chars)
        self._to_id = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Alphabet = the sorted distinct characters of `text`."""
        return cls(alphabet=sorted(set(text)))

    def _encode_content(self, text: str) -> list[int]:
        try:
            return [self._to_id[c] for c in text]
        except KeyError as err:
            char = err.args[0]
            raise ValueError(
                f"character {char!r} (at index {text.index(char)}) is not in the tokenizer alphabet "
                f"{self.alphabet[:64]!r}{'...' if len(self.alphabet) > 64 else ''}."
            ) from None

    def _decode_content(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "alphabet": self.alphabet, "specials": list(SPECIAL_TOKENS)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CharTokenizer:
        _check_state(state, cls.kind)
        return cls(alphabet=state["alphabet"])


def _check_state(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state dict is for a {state.get('kind')!r} tokenizer, not {kind!r}.")
    if list(state.get("specials", SPECIAL_TOKENS)) != list(SPECIAL_TOKENS):
        raise ValueError(
            f"state dict specials {state.get('specials')!r} differ from {list(SPECIAL_TOKENS)!r}."
        )


def tokenizer_from_state_dict(state: dict[str, Any]) -> ByteTokenizer | CharTokenizer:
    """Rebuild a tokenizer from `state_dict()`, whichever kind it is."""
    kinds = {ByteTokenizer.kind: ByteTokenizer, CharTokenizer.kind: CharTokenizer}
    if state.get("kind") not in kinds:
        raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}; expected one of {sorted(kinds)}.")
    return kinds[state["kind"]].from_state_dict(state)
