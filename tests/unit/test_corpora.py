"""The offline text corpora: each reads, is deterministic, honours max_chars, fails clearly."""

import shutil
from pathlib import Path

import pytest

from divlab.data import corpora
from divlab.data.corpora import CORPORA, read_corpus
from divlab.errors import ConfigError

DEBIAN_SOURCES = {
    "fortunes": corpora.FORTUNES_ROOT,
    "kjv": Path("/usr/lib/bible.data"),
    "jargon": corpora.JARGON_FILE,
    "wordnet": corpora.WORDNET_ROOT / "data.noun",
    "licenses": corpora.LICENSES_ROOT,
}


def _present(name: str) -> bool:
    if name == "kjv" and shutil.which("bible") is None:
        return False
    return name not in DEBIAN_SOURCES or DEBIAN_SOURCES[name].exists()


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_reads_prefix_deterministically(name):
    if not _present(name):
        pytest.skip(f"{name} source not installed (make data-text)")
    a = read_corpus(name, max_chars=5000)
    b = read_corpus(name, max_chars=5000)
    assert a == b and len(a) == 5000 and a.strip()
    longer = read_corpus(name, max_chars=20000)
    assert longer.startswith(a)  # a prefix of the same text


def test_known_contents():
    assert "Hamlet" in read_corpus("shakespeare", max_chars=2_000_000)
    assert "def " in read_corpus("python_code", max_chars=20000)
    assert "statement" in read_corpus("python_docs", max_chars=20000)
    if _present("kjv"):
        assert "In the beginning God created the heaven and the earth." in read_corpus("kjv", max_chars=2000)
    if _present("wordnet"):
        assert read_corpus("wordnet", max_chars=200).startswith("entity: that which is perceived")


def test_missing_source_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "FORTUNES_ROOT", tmp_path / "nothing")
    with pytest.raises(ConfigError, match="make data-text"):
        read_corpus("fortunes")


def test_user_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    assert read_corpus(str(tmp_path)) == "first\n\nsecond"
    assert read_corpus(str(tmp_path / "b.txt")) == "second"


@pytest.mark.parametrize(
    "name, match", [("shakespear", "choose one of"), ("/no/such/file", "does not exist")]
)
def test_bad_names_fail_with_one_sentence(name, match):
    with pytest.raises(ConfigError, match=match):
        read_corpus(name)


def test_bad_max_chars():
    with pytest.raises(ConfigError, match="max_chars"):
        read_corpus("python_docs", max_chars=0)
