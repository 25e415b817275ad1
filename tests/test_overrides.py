"""Dot-path overrides: parsing, typed values, list indices, errors naming the valid keys, CLI use."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, write_small_config
from rl4lms.cli import main
from rl4lms.config import load_config
from rl4lms.config.overrides import apply_overrides, parse_override
from rl4lms.errors import ConfigError


def test_values_are_yaml_typed_and_list_indices_are_ints() -> None:
    assert parse_override("alg.args.learning_rate=1e-5") == (["alg", "args", "learning_rate"], "1e-5")
    assert parse_override("train_evaluation.metrics.0.args.min_tokens=5") == (
        ["train_evaluation", "metrics", 0, "args", "min_tokens"], 5)
    assert parse_override("alg.kl_div.target_kl=null")[1] is None
    assert parse_override("env.args.terminate_on_eos=false")[1] is False
    assert parse_override("x.y=[1, 2]")[1] == [1, 2]


def test_overrides_apply_in_order_without_touching_the_original() -> None:
    config = {"alg": {"args": {"n_steps": 4}}, "metrics": [{"args": {"k": 1}}]}
    result = apply_overrides(config, ["alg.args.n_steps=8", "metrics.0.args.k=2", "alg.args.n_steps=16",
                                      "alg.args.new_arg=1"])
    assert result == {"alg": {"args": {"n_steps": 16, "new_arg": 1}}, "metrics": [{"args": {"k": 2}}]}
    assert config["alg"]["args"]["n_steps"] == 4


@pytest.mark.parametrize("override, message", [
    ("alg.argz.n_steps=3", "no key 'argz' under alg (valid keys: id, args, kl_div, policy)"),
    ("train_evaluation.metrics.3.args.min_tokens=1", "'3' is not an index of the list at train_evaluation.metrics"),
    ("seed.value=1", "seed is a int, not a mapping or list"),
    ("alg.args.n_steps", "expected KEY.PATH=VALUE"),
    ("alg..n_steps=1", "empty component"),
])
def test_bad_paths_name_what_is_valid(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(DEFAULT_CONFIG, [override])


def test_overridden_values_are_validated_like_yaml() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(DEFAULT_CONFIG, ["alg.args.n_step=3", "train_evaluation.n_iters=many"])
    text = str(excinfo.value)
    assert "alg.args.n_step: unknown key (did you mean 'n_steps'?)" in text
    assert "train_evaluation.n_iters: expected int, got str ('many')" in text
    assert load_config(DEFAULT_CONFIG, ["alg.args.learning_rate=1e-5"])["alg"]["args"]["learning_rate"] == 1e-5


@pytest.mark.slow
def test_cli_override_changes_the_run(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=4)
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name",
                 "run", "--override", "train_evaluation.n_iters=1", "--override", "alg.args.learning_rate=0.002"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.json").read_text())
    assert saved["train_evaluation"]["n_iters"] == 1 and saved["alg"]["args"]["learning_rate"] == 0.002
    assert len((tmp_path / "run" / "rollout_info.jsonl").read_text().splitlines()) == 1
    assert main(["--config_path", str(config), "--override", "alg.args=3"]) == 2


def test_an_override_creates_an_optional_section_the_file_leaves_out() -> None:
    config = load_config(DEFAULT_CONFIG, ["accelerator.mixed_precision=bf16"])
    assert config["accelerator"] == {"mixed_precision": "bf16", "gradient_accumulation_steps": 1, "sharding": None}
    with pytest.raises(ConfigError, match="no key 'acelerator' under <top level> .*accelerator, custom_modules"):
        load_config(DEFAULT_CONFIG, ["acelerator.mixed_precision=bf16"])
