"""Byte and character tokenisers: round trips, special ids, backspace decoding, state dicts."""

import io
import json

import pytest
import torch

from divlab.data.tokenizers import SPECIAL_TOKENS, ByteTokenizer, CharTokenizer, tokenizer_from_state_dict

ARITH = "0123456789+-="
TEXT = "To be, or not to be: that is the question.\n"


def tokenizers():
    """(tokenizer, a text it can encode)."""
    return [
        (ByteTokenizer(), TEXT + "é ✓"),
        (CharTokenizer(alphabet=ARITH), "12+34=46"),
        (CharTokenizer.from_text(TEXT), TEXT),
    ]


IDS = ["byte", "char-alphabet", "char-text"]


@pytest.mark.parametrize("tok, text", tokenizers(), ids=IDS)
def test_special_ids_distinct_and_in_range(tok, text):
    ids = [tok.pad_id, tok.bos_id, tok.eos_id, tok.bs_id]
    assert len(set(ids)) == 4 and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.special_ids == tuple(ids)
    assert [tok.id_to_token(i) for i in ids] == list(SPECIAL_TOKENS)
    content = tok.encode(text)
    assert not set(content) & set(ids) and max(content) < tok.vocab_size


def test_byte_round_trip_and_layout():
    tok = ByteTokenizer()
    assert tok.vocab_size == 260 and tok.pad_id == 256
    text = "héllo, wörld ✓\n"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[1:-1] == list(text.encode())
    assert tok.decode(ids) == text


def test_char_round_trip_and_alphabet_order():
    tok = CharTokenizer(alphabet=ARITH)
    assert tok.vocab_size == len(ARITH) + 4
    assert tok.encode("0123456789") == list(range(10))  # digits keep their value as id
    ids = tok.encode("17+25=42", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "17+25=42"
    from_text = CharTokenizer.from_text(TEXT)
    assert from_text.alphabet == "".join(sorted(set(TEXT)))
    assert from_text.decode(from_text.encode(TEXT)) == TEXT


def test_char_unknown_character_is_named():
    tok = CharTokenizer(alphabet=ARITH)
    with pytest.raises(ValueError, match="'x'"):
        tok.encode("12x3")
    with pytest.raises(ValueError, match="repeats"):
        CharTokenizer(alphabet="abca")


@pytest.mark.parametrize("tok", [ByteTokenizer(), CharTokenizer(alphabet="abcdef")], ids=["byte", "char"])
def test_backspace_decode(tok):
    bs = tok.bs_id
    enc = tok.encode
    ids = [tok.bos_id, *enc("abc"), bs, *enc("d"), bs, bs, *enc("e"), tok.eos_id]
    assert tok.decode(ids, apply_backspace=True) == "ae"
    assert tok.decode(ids) == "abcde"  # without apply_backspace every special is skipped
    # <bs> on an empty string is a no-op, also after everything has been deleted
    assert tok.decode([bs, bs], apply_backspace=True) == ""
    assert tok.decode([bs, *enc("a"), bs, bs, *enc("b")], apply_backspace=True) == "b"
    # specials are not deleted: <bs> removes the previous content token
    assert tok.decode([*enc("ab"), tok.pad_id, bs], apply_backspace=True) == "a"


def test_decode_rejects_out_of_range_ids():
    tok = CharTokenizer(alphabet="ab")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, tok.vocab_size])


@pytest.mark.parametrize("tok, text", tokenizers(), ids=IDS)
def test_state_dict_round_trip(tok, text):
    state = tok.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain JSON-able
    buffer = io.BytesIO()
    torch.save({"tokenizer": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["tokenizer"]
    for rebuilt in (type(tok).from_state_dict(loaded), tokenizer_from_state_dict(loaded)):
        assert type(rebuilt) is type(tok)
        assert rebuilt.vocab_size == tok.vocab_size and rebuilt.special_ids == tok.special_ids
        assert rebuilt.encode(text) == tok.encode(text)


def test_state_dict_kind_mismatch_raises():
    with pytest.raises(ValueError, match="char"):
        ByteTokenizer.from_state_dict(CharTokenizer(alphabet="ab").state_dict())
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_state_dict({"kind": "bpe"})
