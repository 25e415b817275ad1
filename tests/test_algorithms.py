"""Every algorithm runs end to end from the shipped configs; supervised output warm-starts RL."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import REPO, write_small_config
from rl4lms.cli import main
from rl4lms.config import load_config
from rl4lms.training.builders import build_components

TASK = REPO / "task_configs" / "synthetic_increasing_numbers"


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_t5"])
@pytest.mark.parametrize("alg", ["ppo", "a2c", "trpo", "nlpo", "supervised"])
def test_shipped_config_trains_and_evaluates(tmp_path: Path, alg: str, model: str) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1, base=TASK / f"{model}_{alg}.yml")
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "run"]) == 0
    run = tmp_path / "run"
    assert (run / "run_complete.json").exists() and (run / "model" / "config.json").exists()
    stats = [yaml.safe_load(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in stats] == [1, 2]
    loss_key = {"ppo": "ppo/loss/total", "a2c": "a2c/loss/total", "trpo": "trpo/kl", "nlpo": "ppo/loss/total",
                "supervised": "supervised/loss"}[alg]
    assert all(torch.isfinite(torch.tensor(s[loss_key])) for s in stats)


def test_supervised_lowers_the_loss_and_warm_starts_ppo(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=6, eval_every=6, save_every=6,
                                base=TASK / "tiny_gpt2_supervised.yml", name="sup.yml")
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "sup"]) == 0
    losses = [yaml.safe_load(line)["supervised/loss"]
              for line in (tmp_path / "sup" / "training_info.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]

    model_dir = tmp_path / "sup" / "model"
    rl = yaml.safe_load((TASK / "tiny_gpt2_ppo_on_supervised.yml").read_text())
    assert rl["alg"]["policy"]["args"]["model_name"].endswith("_supervised/model")
    rl["tokenizer"]["model_name"] = rl["alg"]["policy"]["args"]["model_name"] = str(model_dir)
    rl_path = tmp_path / "ppo_on_supervised.yml"
    rl_path.write_text(yaml.safe_dump(rl))
    parts = build_components(load_config(rl_path), "cpu")
    supervised = AutoModelForCausalLM.from_pretrained(model_dir)
    for ours, theirs in zip(parts.alg.policy.model.parameters(), supervised.parameters()):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(parts.alg.policy.ref_model.parameters(), supervised.parameters()):
        assert torch.equal(ours, theirs)  # the KL anchors to the supervised model, as in RL4LMs


def test_supervised_config_needs_no_reward_but_rl_does(tmp_path: Path) -> None:
    config = yaml.safe_load((TASK / "tiny_gpt2_supervised.yml").read_text())
    assert "reward_fn" not in config
    config["alg"]["id"] = "a2c"
    path = tmp_path / "a2c_without_reward.yml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path)]) == 2
