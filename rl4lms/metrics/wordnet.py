"""WordNet for METEOR without a download: NLTK's own copy, or Debian's ``wordnet-base`` files.

``apt-get install wordnet-base wordnet-sense-index`` puts the WordNet 3.0 database in
``/usr/share/wordnet``. NLTK's reader also wants a ``lexnames`` file, which Debian ships only
as the ``lexnames(5WN)`` man page; :func:`load_wordnet` assembles an NLTK-layout copy
(database files + ``lexnames``) under ``$RL4LMS_CACHE/nltk_data`` once and reads it from there.
"""
from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, List

from rl4lms.models.tiny import cache_dir

DEBIAN_WORDNET_DIR = Path(os.environ.get("RL4LMS_WORDNET_DIR", "/usr/share/wordnet"))
DEBIAN_LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
_DATABASE_FILES = ("data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun",
                   "index.verb", "index.sense", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
_LEXNAME_LINE = re.compile(r"^(\d\d)\s+((?:adj|adv|noun|verb)\.\w+)")
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetMissingError(LookupError):
    """Neither NLTK's WordNet nor Debian's WordNet packages are installed."""


def lexnames_from_man_page(man_page: Path = DEBIAN_LEXNAMES_MAN_PAGE) -> List[str]:
    """The 45 ``lexnames`` lines (``NN<TAB>name<TAB>category``) read from Debian's man page."""
    lines = []
    with gzip.open(man_page, "rt", encoding="utf-8", errors="replace") as page:
        for raw in page:
            match = _LEXNAME_LINE.match(raw.strip())
            if match:
                number, name = match.groups()
                lines.append(f"{number}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}")
    if [int(line.split("\t")[0]) for line in lines] != list(range(len(lines))) or not lines:
        raise WordNetMissingError(f"could not read the lexnames table from {man_page}")
    return lines


def _build_nltk_copy(target: Path) -> None:
    missing = [name for name in _DATABASE_FILES if not (DEBIAN_WORDNET_DIR / name).is_file()]
    if missing or not DEBIAN_LEXNAMES_MAN_PAGE.is_file():
        raise WordNetMissingError(
            "METEOR needs WordNet, and neither NLTK's copy nor Debian's is installed "
            f"(missing in {DEBIAN_WORDNET_DIR}: {', '.join(missing) or 'none'}; man page "
            f"{DEBIAN_LEXNAMES_MAN_PAGE} {'found' if DEBIAN_LEXNAMES_MAN_PAGE.is_file() else 'missing'}). "
            "Install it with: apt-get install wordnet-base wordnet-sense-index")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in _DATABASE_FILES:
            shutil.copyfile(DEBIAN_WORDNET_DIR / name, staging / name)
        (staging / "lexnames").write_text("\n".join(lexnames_from_man_page()) + "\n")
        staging.rename(target)
    except OSError:
        if not (target / "lexnames").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def load_wordnet() -> Any:
    """An NLTK ``WordNetCorpusReader``: NLTK's installed corpus if any, else the Debian files."""
    import nltk
    from nltk.corpus import wordnet
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    try:
        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        pass
    data_root = cache_dir() / "nltk_data"
    target = data_root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        _build_nltk_copy(target)
    if str(data_root) not in nltk.data.path:  # NLTK only reads corpora under its data path
        nltk.data.path.append(str(data_root))
    with warnings.catch_warnings():  # "multilingual functions are not available": English is all METEOR uses
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(str(target), None)
