"""IMDB sentiment continuation (GRUE): prompts are the first part of a review."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from rl4lms.data_pools.sources import hub_split_name, load_rows, truncated
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

IMDB_DATASET = "stanfordnlp/imdb"
TRAIN_RATIO = 0.8


def imdb_split_rows(pool_id: str, split: str, seed: int, test_size: int, fixture: bool,
                    dataset_name: str) -> List[Dict[str, Any]]:
    """train/val: a seeded 80/20 cut of IMDB's train split; test: the first ``test_size`` of its shuffled test split."""
    hub_split = "test" if hub_split_name(split) == "test" else "train"
    rows = list(load_rows(pool_id, dataset_name, None, hub_split, fixture, fixture_name="imdb"))
    order = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[int(ix)] for ix in order]
    if split == "test":
        return rows[:test_size]
    cut = int(len(rows) * TRAIN_RATIO)
    return rows[:cut] if split == "train" else rows[cut:]


def split_words(text: str, prompt_ratio: float) -> Tuple[str, str]:
    """(the first ``prompt_ratio`` of the space-separated words, the rest)."""
    if not 0.0 < prompt_ratio < 1.0:
        raise ValueError(f"prompt_ratio must be between 0 and 1, got {prompt_ratio}")
    words = text.split(" ")
    cut = int(len(words) * prompt_ratio)
    return " ".join(words[:cut]), " ".join(words[cut:])


class IMDB(TextGenPool):
    """Prompt: the first half of a review; reference: the whole review; ``meta_data["label"]``: 1 = positive."""

    @classmethod
    def prepare(cls, split: str, seed: int = 42, prompt_ratio: float = 0.5, test_size: int = 5000,
                fixture: bool = False, max_size: Optional[int] = None,
                dataset_name: str = IMDB_DATASET) -> "IMDB":
        rows = imdb_split_rows("imdb", split, seed, test_size, fixture, dataset_name)
        samples = [Sample(id=f"{split}_{ix}", prompt_or_input_text=split_words(row["text"], prompt_ratio)[0],
                          references=[row["text"]], meta_data={"label": int(row["label"])})
                   for ix, row in enumerate(rows)]
        return cls(truncated(samples, max_size))


class IMDBForSeq2Seq(TextGenPool):
    """Prompt: the first half of a review; reference: the second half. Train keeps positive reviews only
    (the first ``positive_ratio`` of them), to fit a positive-sentiment generator by supervision."""

    @classmethod
    def prepare(cls, split: str, seed: int = 42, positive_ratio: float = 1.0, prompt_ratio: float = 0.5,
                test_size: int = 5000, fixture: bool = False, max_size: Optional[int] = None,
                dataset_name: str = IMDB_DATASET) -> "IMDBForSeq2Seq":
        if not 0.0 < positive_ratio <= 1.0:
            raise ValueError(f"positive_ratio must be in (0, 1], got {positive_ratio}")
        samples = []
        for ix, row in enumerate(imdb_split_rows("imdb_seq2seq", split, seed, test_size, fixture, dataset_name)):
            if split == "train" and int(row["label"]) != 1:
                continue
            prompt, rest = split_words(row["text"], prompt_ratio)
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=[rest],
                                  meta_data={"reference": row["text"], "label": int(row["label"])}))
        if split == "train":
            samples = samples[:max(1, int(len(samples) * positive_ratio))]
        return cls(truncated(samples, max_size))
