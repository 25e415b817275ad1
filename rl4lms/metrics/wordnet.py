"""WordNet for METEOR without a download: NLTK's own copy, or Debian's ``wordnet-base`` files.

``apt-get install wordnet-base wordnet-sense-index`` puts the WordNet 3.0 database in
``/usr/share/wordnet``. NLTK's reader also wants WordNet's ``lexnames`` file (the numbered list of
lexicographer files), which Debian ships only as a man page; :func:`load_wordnet` assembles an
NLTK-layout copy (database files + ``lexnames``) under ``$RL4LMS_CACHE/nltk_data`` once.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, List, Optional

from rl4lms.errors import WordNetMissingError
from rl4lms.models.tiny import cache_dir

DEBIAN_WORDNET_DIR = Path(os.environ.get("RL4LMS_WORDNET_DIR", "/usr/share/wordnet"))
_DATABASE_FILES = ("data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun",
                   "index.verb", "index.sense", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
# WordNet 3.0's lexicographer files, in their numbered order (lexnames(5WN)).
LEXICOGRAPHER_FILES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity "
    "noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


INSTALL_HINT = "apt-get install --no-install-recommends wordnet-base wordnet-sense-index"


def _nltk_data_dirs() -> List[Path]:
    """The folders NLTK searches for its data (``nltk.data.path``'s defaults), listed without
    importing NLTK, which takes seconds."""
    given = [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    prefix = Path(sys.prefix)
    return [*given, Path.home() / "nltk_data", prefix / "nltk_data", prefix / "share" / "nltk_data",
            prefix / "lib" / "nltk_data", *(Path(p) for p in ("/usr/share/nltk_data", "/usr/local/share/nltk_data",
                                                              "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"))]


def wordnet_missing() -> Optional[str]:
    """Why METEOR cannot find WordNet (one line with the install command), or None if it can: NLTK's
    corpus, the copy :func:`load_wordnet` built, or Debian's files. Cheap: it reads no database."""
    corpora = [d / "corpora" for d in _nltk_data_dirs()] + [cache_dir() / "nltk_data" / "corpora"]
    if any((c / "wordnet").is_dir() or (c / "wordnet.zip").is_file() for c in corpora):
        return None
    missing = [name for name in _DATABASE_FILES if not (DEBIAN_WORDNET_DIR / name).is_file()]
    if not missing:
        return None
    return (f"METEOR needs WordNet, and neither NLTK's copy nor Debian's is installed (missing in "
            f"{DEBIAN_WORDNET_DIR}: {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); {INSTALL_HINT}")


def lexnames_lines() -> List[str]:
    """``NN<TAB>name<TAB>category`` lines of WordNet's ``lexnames`` file."""
    return [f"{ix:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}"
            for ix, name in enumerate(LEXICOGRAPHER_FILES)]


def _build_nltk_copy(target: Path) -> None:
    missing = [name for name in _DATABASE_FILES if not (DEBIAN_WORDNET_DIR / name).is_file()]
    if missing:
        raise WordNetMissingError(
            "METEOR needs WordNet, and neither NLTK's copy nor Debian's is installed "
            f"(missing in {DEBIAN_WORDNET_DIR}: {', '.join(missing)}). "
            f"Install it with: {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in _DATABASE_FILES:
            shutil.copyfile(DEBIAN_WORDNET_DIR / name, staging / name)
        (staging / "lexnames").write_text("\n".join(lexnames_lines()) + "\n")
        staging.rename(target)
    except OSError:
        if not (target / "lexnames").is_file():  # another process may have built it meanwhile
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
