"""NarrativeQA (GRUE) in UnifiedQA's TSV form: ``question \\n summary<TAB>answer``, one answer per line."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

from rl4lms.data_pools.sources import data_cache_dir, download, fixture_path, offline_hint, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

UNIFIEDQA_URL = "https://storage.googleapis.com/unifiedqa/data/narrativeqa/{file}.tsv"
SPLIT_FILES = {"train": "train", "val": "dev", "test": "test"}


def normalize(text: str, strip: bool) -> str:
    """UnifiedQA's normalization: lower-case (and strip answers)."""
    text = text.lower()
    return text.strip() if strip else text


def read_question_answers(path: Path) -> Dict[str, List[str]]:
    """Questions (with their context) in file order, each with all of its answers."""
    grouped: Dict[str, List[str]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{line_number}: expected 'question<TAB>answer', got {len(row)} fields")
            grouped.setdefault(row[0], []).append(row[1])
    return grouped


class NarrativeQA(TextGenPool):
    """Prompt: the lower-cased question and story summary; references: every answer given for it."""

    @classmethod
    def prepare(cls, split: str, fixture: bool = False, max_size: Optional[int] = None,
                url_template: str = UNIFIEDQA_URL) -> "NarrativeQA":
        if split not in SPLIT_FILES:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_FILES)}")
        name = SPLIT_FILES[split]
        if fixture:
            path = fixture_path("narrative_qa", f"{name}.tsv")
        else:
            path = download(url_template.format(file=name), data_cache_dir("narrative_qa") / f"{name}.tsv",
                            "datapool 'narrative_qa'", offline_hint("narrative_qa"))
        samples = [Sample(id=f"{split}_{ix}", prompt_or_input_text=normalize(question, strip=False),
                          references=[normalize(answer, strip=True) for answer in answers])
                   for ix, (question, answers) in enumerate(read_question_answers(path).items())]
        return cls(truncated(samples, max_size))
