"""Where data pools get their rows: the Hugging Face hub (``datasets.load_dataset``), downloaded files,
or the small fixtures shipped in ``rl4lms/data_pools/fixtures`` (``datapool.args.fixture: true``).

Fixtures hold a few dozen made-up rows in the same schema as the real data set, so the same
conversion code runs on both.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, TypeVar

from rl4lms.errors import DataSourceError
from rl4lms.models.tiny import cache_dir

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
HUB_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
T = TypeVar("T")


def hub_split_name(split: str) -> str:
    """RL4LMs' split names (train/val/test) as the hub names them (train/validation/test)."""
    try:
        return HUB_SPLIT_NAMES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(HUB_SPLIT_NAMES)}") from None


def fixture_path(pool_id: str, *parts: str) -> Path:
    return FIXTURES_DIR.joinpath(pool_id, *parts)


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: invalid JSON: {error}") from error
    return rows


def offline_hint(pool_id: str) -> str:
    return (f"Offline? `datapool.args.fixture: true` uses the small sample shipped for '{pool_id}' "
            "(or run with --smoke); `dataset_name` may also point at a local copy.")


def load_rows(pool_id: str, dataset_name: str, dataset_config: Optional[str], hub_split: str,
              fixture: bool, fixture_name: Optional[str] = None) -> Iterable[Dict[str, Any]]:
    """Rows of one split: the shipped fixture (folder ``fixture_name``, default ``pool_id``), or
    ``datasets.load_dataset(dataset_name, dataset_config)``."""
    if fixture:
        return read_jsonl(fixture_path(fixture_name or pool_id, f"{hub_split}.jsonl"))
    from datasets import load_dataset

    try:
        return load_dataset(dataset_name, dataset_config, split=hub_split)
    except Exception as error:  # hub, network, script and schema errors all end the same way
        where = f"'{dataset_name}'" + (f" (config '{dataset_config}')" if dataset_config else "")
        raise DataSourceError(f"datapool '{pool_id}': could not load {where}, split '{hub_split}': "
                              f"{type(error).__name__}: {error}\n{offline_hint(pool_id)}") from error


def data_cache_dir(pool_id: str) -> Path:
    """Folder for files a pool downloads (under ``$RL4LMS_CACHE/data``)."""
    return cache_dir() / "data" / pool_id


def download(url: str, destination: Path, owner: str, hint: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``destination`` once (atomically); a failure names ``owner`` (the config
    entry that needs the file), the URL, and ``hint`` (what to do offline)."""
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".download-", delete=False) as partial:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, partial)
        except (OSError, ValueError) as error:
            Path(partial.name).unlink(missing_ok=True)
            raise DataSourceError(f"{owner}: could not download {url}: {error}\n{hint}") from error
    Path(partial.name).replace(destination)
    return destination


def truncated(items: Sequence[T], max_size: Optional[int]) -> List[T]:
    """The first ``max_size`` items (all of them when ``None``)."""
    if max_size is not None and max_size < 1:
        raise ValueError(f"datapool.args.max_size must be at least 1, got {max_size}")
    return list(items if max_size is None else items[:max_size])
