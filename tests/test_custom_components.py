"""The docs' custom-component example (docs/guide/custom_components.md), run as a user would: a module
listed in custom_modules."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_small_config
from rl4lms.cli import main
from rl4lms.registry import DataPoolRegistry, MetricRegistry, RewardFunctionRegistry

pytestmark = pytest.mark.slow  # the custom-component example trains a run


def _readme_example() -> str:
    page = REPO / "docs" / "guide" / "custom_components.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return next(block for block in blocks if "my_pkg/components.py" in block)


def test_readme_custom_components_train_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "components.py").write_text(_readme_example())
    data = tmp_path / "prompts"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.txt").write_text("\n".join(f"{i} {i + 1}" for i in range(5)))
    monkeypatch.syspath_prepend(str(tmp_path))

    config = yaml.safe_load(write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1).read_text())
    config["custom_modules"] = ["my_pkg.components"]
    config["reward_fn"] = {"id": "short_answers", "args": {"max_words": 3}}
    config["datapool"] = {"id": "my_prompts", "args": {"path": str(data)}}
    config["train_evaluation"]["metrics"] = [{"id": "mean_words", "args": {}}]
    path = tmp_path / "custom.yml"
    path.write_text(yaml.safe_dump(config))
    try:
        assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path),
                     "--experiment_name", "custom"]) == 0
    finally:
        sys.modules.pop("my_pkg.components", None)
    metrics = (tmp_path / "custom" / "val_split_metrics.jsonl").read_text()
    assert "custom/mean_words" in metrics
    assert {"short_answers"} <= set(RewardFunctionRegistry.ids())
    assert "my_prompts" in DataPoolRegistry and "mean_words" in MetricRegistry
