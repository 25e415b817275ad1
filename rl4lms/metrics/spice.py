"""SPICE (Anderson et al., 2016): F-score of scene-graph tuples, through the SPICE 1.0 jar.

As in RL4LMs (CommonGen's evaluation): every sample's generation and references are written to a
JSON file, ``java -jar -Xmx8G spice-1.0.jar <in> -cache <cache> -out <out> -subset -silent`` parses
them with Stanford CoreNLP, and ``scores.All.f`` of each sample is read back; the corpus score is
their mean. Texts are word-tokenized first (NLTK tokens joined by spaces; RL4LMs uses spaCy's).
Each sample is scored on its own (RL4LMs keys samples by prompt, so equal prompts share one score).
A sample whose SPICE is undefined (NaN) is left out of the mean.

Requirements, checked when the metric is built (:func:`missing_requirements`): Java 8 or later, and a
SPICE folder (``spice_home``, or ``$RL4LMS_SPICE_HOME``, or ``$RL4LMS_CACHE/spice``) holding
``spice-1.0.jar`` with its ``lib/`` and Stanford CoreNLP 3.6.0's two jars in ``lib/``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from rl4lms.errors import SpiceRunError, SpiceUnavailableError
from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.scoring.tokenize import word_tokenize
from rl4lms.models.tiny import cache_dir

SPICE_JAR = "spice-1.0.jar"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_URL = "https://panderson.me/images/SPICE-1.0.zip"
CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"


def default_spice_home() -> Path:
    return Path(os.environ.get("RL4LMS_SPICE_HOME") or cache_dir() / "spice")


def missing_requirements(spice_home: Path, java: str = "java") -> List[str]:
    """What is missing to run SPICE, each with how to install it (empty when everything is there)."""
    missing = []
    if shutil.which(java) is None:
        missing.append(f"Java ('{java}' is not on PATH): apt-get install --no-install-recommends default-jre-headless")
    if not (spice_home / SPICE_JAR).is_file():
        missing.append(f"{spice_home / SPICE_JAR}: download {SPICE_URL} and unzip it so that {SPICE_JAR} and its "
                       f"lib/ folder are in {spice_home}")
    absent = [jar for jar in CORENLP_JARS if not (spice_home / "lib" / jar).is_file()]
    if absent:
        missing.append(f"Stanford CoreNLP 3.6.0 ({', '.join(absent)} in {spice_home / 'lib'}): download "
                       f"{CORENLP_URL} and move those two jars from the archive into {spice_home / 'lib'}")
    return missing


def _score(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def tokenized(text: str) -> str:
    return " ".join(word_tokenize(text))


class SpiceMetric(BaseMetric):
    """SPICE F-score per sample and corpus mean (``lexical/spice``); see the module docstring.

    Args:
        spice_home: folder with ``spice-1.0.jar``, its ``lib/`` and CoreNLP's jars (default
            ``$RL4LMS_SPICE_HOME``, else ``$RL4LMS_CACHE/spice``).
        java: the Java executable.
        max_memory: the JVM's heap limit (``-Xmx``), "8G" as in RL4LMs.
        timeout: seconds one SPICE run may take.
    """

    def __init__(self, spice_home: Optional[str] = None, java: str = "java", max_memory: str = "8G",
                 timeout: float = 3600.0) -> None:
        self.spice_home = Path(spice_home) if spice_home else default_spice_home()
        missing = self.requirement_errors(spice_home, java)
        if missing:
            raise SpiceUnavailableError("; ".join(missing))
        self.java = java
        self.max_memory = max_memory
        self.timeout = timeout

    @staticmethod
    def requirement_errors(spice_home: Optional[str] = None, java: str = "java", **_: Any) -> List[str]:
        """What the config's arguments leave missing (validation reports it before any model loads)."""
        missing = missing_requirements(Path(spice_home) if spice_home else default_spice_home(), java)
        return [f"SPICE needs Java and Stanford CoreNLP; missing: {'; '.join(missing)}"] if missing else []

    def run_spice(self, entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """SPICE's JSON output for ``entries`` (``image_id``, ``test``, ``refs``)."""
        cache = self.spice_home / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rl4lms-spice-") as folder:
            source, target = Path(folder) / "input.json", Path(folder) / "output.json"
            source.write_text(json.dumps(entries))
            command = [self.java, "-jar", f"-Xmx{self.max_memory}", SPICE_JAR, str(source), "-cache", str(cache),
                       "-out", str(target), "-subset", "-silent"]
            try:
                done = subprocess.run(command, cwd=self.spice_home, capture_output=True, text=True,
                                      timeout=self.timeout)
            except subprocess.TimeoutExpired as error:
                raise SpiceRunError(f"SPICE did not finish within {self.timeout:.0f} s") from error
            if done.returncode != 0 or not target.is_file():
                tail = " ".join(done.stderr.strip().splitlines()[-3:])
                raise SpiceRunError(f"SPICE failed (exit code {done.returncode}): {tail}")
            return json.loads(target.read_text())

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        entries = [{"image_id": ix, "test": tokenized(gen), "refs": [tokenized(ref) for ref in refs] or [""]}
                   for ix, (gen, refs) in enumerate(zip(generated_texts, reference_texts))]
        by_id = {item["image_id"]: _score(item["scores"]["All"]["f"]) for item in self.run_spice(entries)}
        scores = [by_id.get(ix, math.nan) for ix in range(len(entries))]
        defined = [s for s in scores if not math.isnan(s)]
        return {"lexical/spice": (scores, sum(defined) / len(defined) if defined else 0.0)}
