"""Dialogue pools: DailyDialog (GRUE) and CRD3 (Critical Role), next-turn generation from the context."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import List, Optional

from rl4lms.data_pools.sources import (data_cache_dir, download, fixture_path, hub_split_name, load_rows, offline_hint,
                                       truncated)
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool
from rl4lms.errors import DataSourceError
from rl4lms.scoring.dialog import EOU_TOKEN


class DailyDialog(TextGenPool):
    """Prompt: the last ``context_size`` utterances joined by ``<EOU>``; reference: the next utterance.
    ``meta_data`` holds its dialogue act (``intent``, 1-4) and ``emotion``, each as a one-item list."""

    @classmethod
    def prepare(cls, split: str, context_size: int = 5, fixture: bool = False, max_size: Optional[int] = None,
                dataset_name: str = "li2017dailydialog/daily_dialog") -> "DailyDialog":
        if context_size < 1:
            raise ValueError(f"context_size must be at least 1, got {context_size}")
        samples: List[Sample] = []
        utterance_id = 0
        for dialog in load_rows("daily_dialog", dataset_name, None, hub_split_name(split), fixture):
            context: List[str] = []
            for utterance, emotion, act in zip(dialog["dialog"], dialog["emotion"], dialog["act"]):
                if len(context) >= context_size:
                    samples.append(Sample(
                        id=f"{split}_{utterance_id}",
                        prompt_or_input_text=EOU_TOKEN.join(context[-context_size:]) + " " + EOU_TOKEN,
                        references=[utterance + EOU_TOKEN],
                        meta_data={"emotion": [int(emotion)], "intent": [int(act)]}))
                context.append(utterance)
                utterance_id += 1
        return cls(truncated(samples, max_size))


CRD3_URL = "https://github.com/RevanthRameshkumar/CRD3/archive/refs/heads/master.zip"
CRD3_FOLDER = "CRD3-master"
CRD3_SPLIT_LISTS = {"train": "train_files", "val": "val_files", "test": "test_files"}


def crd3_root(fixture: bool, url: str) -> Path:
    """The extracted CRD3 repository: shipped fixture, or downloaded and unzipped into the cache once."""
    if fixture:
        return fixture_path("crd3", CRD3_FOLDER)
    base = data_cache_dir("crd3")
    root = base / CRD3_FOLDER
    if not root.is_dir():
        archive = download(url, base / "master.zip", "datapool 'crd3'", offline_hint("crd3"))
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(base)
        except zipfile.BadZipFile as error:
            archive.unlink()
            raise DataSourceError(f"datapool 'crd3': {archive} is not a zip archive ({error}); removed it") from error
    return root


class CRD3DialogueGeneration(TextGenPool):
    """Prompt: up to ``max_context_size`` earlier turns (``NAME: utterances``, one per line) and the next
    speaker's name; reference: that speaker's utterances. Turns with fewer than two earlier turns are skipped."""

    @classmethod
    def prepare(cls, split: str, max_context_size: int = 5, fixture: bool = False,
                max_size: Optional[int] = None, url: str = CRD3_URL) -> "CRD3DialogueGeneration":
        if split not in CRD3_SPLIT_LISTS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(CRD3_SPLIT_LISTS)}")
        if max_context_size < 1:
            raise ValueError(f"max_context_size must be at least 1, got {max_context_size}")
        root = crd3_root(fixture, url)
        episodes = (root / "data" / "aligned data" / CRD3_SPLIT_LISTS[split]).read_text().split()
        samples: List[Sample] = []
        for episode_ix, episode in enumerate(episodes):
            turns = json.loads((root / "data" / "cleaned data" / f"{episode}.json").read_text())["TURNS"]
            context: List[str] = []
            for turn_ix, turn in enumerate(turns):
                name = turn["NAMES"][0]
                utterances = " ".join(turn["UTTERANCES"])
                if len(context) > 1:
                    samples.append(Sample(id=f"{split}_ep_{episode_ix}_turn_{turn_ix}",
                                          prompt_or_input_text="\n".join(context[-max_context_size:]) + f"\n{name}: ",
                                          references=[utterances]))
                context.append(f"{name}: {utterances}")
        return cls(truncated(samples, max_size))
