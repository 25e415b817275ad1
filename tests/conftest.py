"""Shared fixtures: offline hub, tiny-model cache and wandb dirs inside pytest's temp folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep every cache of the test session out of the user's home."""
    root = tmp_path_factory.mktemp("home")
    os.environ["RL4LMS_CACHE"] = str(root / "rl4lms_cache")
    os.environ["HF_HOME"] = str(root / "hf_home")
    os.environ["WANDB_DIR"] = str(root / "wandb")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer(isolated_home: Path):
    from rl4lms.models.loading import load_tokenizer

    return load_tokenizer("rl4lms/tiny-gpt2")
