"""The training entry point: artifacts of a run, clear errors for bad input, wandb offline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import DEFAULT_CONFIG, write_custom_module_config, write_small_config
from rl4lms.cli import format_summary, main


@pytest.mark.slow
def test_run_writes_every_artifact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_small_config(tmp_path, n_iters=3, eval_every=2, save_every=2)
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "exp"]) == 0
    run = tmp_path / "exp"
    assert json.loads((run / "config.json").read_text())["train_evaluation"]["n_iters"] == 3
    assert "val metrics at epoch 0" in (run / "log.txt").read_text()
    rollouts = [json.loads(line) for line in (run / "rollout_info.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rollouts] == [1, 2, 3]
    training = [json.loads(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    for name in ("objective/kl", "objective/kl_coef", "objective/entropy", "ppo/policy/clipfrac",
                 "ppo/val/var_explained", "ppo/loss/total", "ppo/returns/mean", "ppo/mean_scores"):
        assert all(isinstance(r[name], float) for r in training), name
    val = [json.loads(line) for line in (run / "val_split_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in val] == [0, 2, 3]
    assert "synthetic/increasing_numbers_in_text" in val[0]["metrics"]
    predictions = json.loads((run / "epoch_3_val_split_predictions.json").read_text())
    assert len(predictions) == 8 and {"prompt_text", "generated_text", "ref_text"} <= set(predictions[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_000002", "checkpoint_000003"]
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert model.config.vocab_size == len(tokenizer)
    assert (run / "model" / "value_head.safetensors").exists()
    summary = json.loads((run / "run_complete.json").read_text())
    assert summary["val"]["before"] == val[0]["metrics"] and summary["val"]["after"] == val[-1]["metrics"]
    out = capsys.readouterr().out
    assert "before" in out and "synthetic/increasing_numbers_in_text" in out


def _broken_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    edit(config)
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["reward_fn"].update(id="increasing_numbrs"), "reward_fn.id: unknown reward_fn id"),
    (lambda c: c["alg"]["args"].update(n_step=4), "alg.args.n_step: unknown key (did you mean 'n_steps'?)"),
    (lambda c: c["env"]["args"].update(max_episode_length="ten"), "env.args.max_episode_length: expected int"),
    (lambda c: c.pop("train_evaluation"), "train_evaluation: required key is missing"),
])
def test_bad_config_fails_before_loading_models(tmp_path: Path, capsys: pytest.CaptureFixture, edit,
                                                expected: str) -> None:
    path = _broken_config(tmp_path, edit)
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path)]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "broken").exists()


def test_offline_hub_id_gives_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _broken_config(tmp_path, lambda c: c["tokenizer"].update(model_name="rl4lms-no-such-org/no-such-model"))
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not load tokenizer" in err and "rl4lms/tiny-gpt2" in err


def test_empty_datapool_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _broken_config(tmp_path, lambda c: c["datapool"].update(id="dummy_pool", args={"prompt": "1", "n_samples": 0}))
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path)]) == 2
    assert "n_samples must be at least 1" in capsys.readouterr().err


def test_changed_config_in_existing_run_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_small_config(tmp_path, n_iters=1, eval_every=1, save_every=1)
    args = ["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name", "e"]
    assert main(args) == 0
    changed = yaml.safe_load(config.read_text())
    changed["alg"]["args"]["learning_rate"] = 0.1
    config.write_text(yaml.safe_dump(changed))
    assert main(args) == 2
    assert "alg.args.learning_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_wandb_offline_logs_into_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = write_small_config(tmp_path, n_iters=1, eval_every=1, save_every=1)
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "w", "--log_to_wandb"]) == 0
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "w" / "wandb_run_id.txt").read_text().strip()


def test_summary_table_lists_before_and_after() -> None:
    table = format_summary({"val": {"before": {"m": 0.1}, "after": {"m": 0.5}}, "test": {},
                            "train_ep_rew": {"first_iteration": 0.0, "last_iteration": 1.0}})
    assert "0.1000" in table and "0.5000" in table and "rollout_info/ep_rew" in table


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["env"]["args"].update(max_prompt_length=250, max_episode_length=10),
     "max_prompt_length + max_episode_length = 260 exceeds the 256 positions"),
    (lambda c: c["alg"]["policy"]["args"]["generation_kwargs"].update(num_return_sequences=2),
     "num_return_sequences must be 1"),
])
def test_impossible_run_settings_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture, edit,
                                              expected: str) -> None:
    path = _broken_config(tmp_path, edit)
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path)]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_run_stopped_by_a_bad_reward_keeps_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    source = ("from rl4lms.registry import RewardFunctionRegistry\n"
              "from rl4lms.rewards.synthetic import IncreasingNumbersReward\n\n"
              "@RewardFunctionRegistry.register('flaky_reward')\n"
              "class FlakyReward(IncreasingNumbersReward):\n"
              "    calls = 0\n\n"
              "    def __call__(self, *args, **kwargs):\n"
              "        FlakyReward.calls += 1\n"
              "        scores = super().__call__(*args, **kwargs)\n"
              "        return scores if FlakyReward.calls <= 2 else [float('nan')] * len(scores)\n")
    path = write_custom_module_config(
        tmp_path, monkeypatch, "rl4lms_flaky_reward", source,
        lambda c: c.update(reward_fn={"id": "flaky_reward", "args": {"min_tokens": 10}}), "flaky.yml",
        n_iters=4, eval_every=1, save_every=1)
    assert main(["--config_path", str(path), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "flaky"]) == 1
    assert "non-finite reward" in capsys.readouterr().err
    run = tmp_path / "flaky"
    rollouts = [json.loads(line) for line in (run / "rollout_info.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rollouts] == [1, 2]
    assert (run / "checkpoints" / "checkpoint_000002").is_dir()
    assert not (run / "run_complete.json").exists()
