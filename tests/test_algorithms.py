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
@pytest.mark.parametrize("alg", ["ppo", "a2c", "trpo", "nlpo", "supervised", "grpo", "rloo", "reinforce_plus_plus"])
@pytest.mark.slow
def test_shipped_config_trains_and_evaluates(tmp_path: Path, alg: str, model: str) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1, base=TASK / f"{model}_{alg}.yml")
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path),
                 "--experiment_name", "run"]) == 0
    run = tmp_path / "run"
    assert (run / "run_complete.json").exists() and (run / "model" / "config.json").exists()
    stats = [yaml.safe_load(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in stats] == [1, 2]
    loss_key = {"ppo": "ppo/loss/total", "a2c": "a2c/loss/total", "trpo": "trpo/kl", "nlpo": "ppo/loss/total",
                "supervised": "supervised/loss"}.get(alg, f"{alg}/loss/total")
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


@pytest.mark.parametrize("schedule", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_lr_schedules_match_hugging_face_schedulers(schedule: str) -> None:
    from transformers import get_scheduler

    from rl4lms.algorithms.lr_schedule import lr_multiplier

    warmup = 0 if schedule == "constant" else 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=10)
    for step in range(11):  # past the end Hugging Face's cosine rises again; ours stays at 0
        assert lr_multiplier(schedule, step, 10, warmup) == pytest.approx(optimizer.param_groups[0]["lr"]), step
        optimizer.step()
        scheduler.step()


def test_supervised_cosine_schedule_spans_the_run(tmp_path: Path) -> None:
    import math

    config = write_small_config(tmp_path, n_iters=4, eval_every=4, save_every=4,
                                base=TASK / "tiny_gpt2_supervised.yml", name="sup.yml")
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name",
                 "sup", "--override", "alg.args.lr_scheduler_type=cosine", "--override", "alg.args.warmup_steps=1",
                 "--override", "alg.args.batch_size=4"]) == 0
    stats = [yaml.safe_load(line) for line in (tmp_path / "sup" / "training_info.jsonl").read_text().splitlines()]
    # 8 pairs in batches of 4: 2 steps per epoch, 8 in all; each epoch logs the rate of its last step.
    assert [s["supervised/n_pairs"] for s in stats] == [8.0] * 4
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 7)) for step in (1, 3, 5, 7)]
    assert [s["supervised/learning_rate"] for s in stats] == pytest.approx(expected)


def test_bad_lr_schedule_settings_are_named(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, base=TASK / "tiny_gpt2_supervised.yml", name="sup.yml")
    for override, message in (("alg.args.lr_scheduler_type=cosine_annealing", "not one of constant"),
                              ("alg.args.warmup_steps=5", "needs lr_scheduler_type constant_with_warmup")):
        with pytest.raises(ValueError, match=message):
            build_components(load_config(config, [override]), "cpu")


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_t5"])
def test_supervised_weight_decay_spares_biases_and_norms(tmp_path: Path, model: str) -> None:
    config = write_small_config(tmp_path, base=TASK / f"{model}_supervised.yml", policy_args={"weight_decay": 0.1})
    policy = build_components(load_config(config), "cpu").alg.policy
    decayed, exempt = policy.optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    names = {id(p): name for name, p in policy.named_parameters()}
    exempt_names = [names[id(p)] for p in exempt["params"]]
    assert exempt_names and all(n.endswith("bias") or "ln_" in n or "layer_norm" in n for n in exempt_names)
    decayed_names = [names[id(p)] for p in decayed["params"]]
    assert any(n.endswith("weight") and ("attn" in n or "SelfAttention" in n) for n in decayed_names)
    assert len(decayed["params"]) + len(exempt["params"]) == sum(p.requires_grad for p in policy.parameters())


@pytest.mark.slow
def test_resumed_supervised_run_continues_the_schedule_exactly(tmp_path: Path) -> None:
    import shutil

    config = write_small_config(tmp_path, n_iters=4, eval_every=2, save_every=2,
                                base=TASK / "tiny_gpt2_supervised.yml", policy_args={"weight_decay": 0.1})
    args = ["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name", "sup",
            "--override", "alg.args.lr_scheduler_type=cosine", "--override", "alg.args.batch_size=4"]
    assert main(args) == 0
    run = tmp_path / "sup"
    first = [yaml.safe_load(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    # As if killed after the checkpoint of iteration 2: the rerun redoes iterations 3 and 4.
    shutil.rmtree(run / "checkpoints" / "checkpoint_000004")
    (run / "run_complete.json").unlink()
    assert main(args) == 0
    assert "resumed from" in (run / "log.txt").read_text() and (run / "superseded").is_dir()
    second = [yaml.safe_load(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in second] == [1, 2, 3, 4]
    for key in ("supervised/loss", "supervised/learning_rate"):
        assert [s[key] for s in second] == [s[key] for s in first], key


@pytest.mark.parametrize("alg, stat", [("ppo", "ppo/learning_rate"), ("a2c", "a2c/learning_rate")])
@pytest.mark.slow
def test_rl_linear_schedule_anneals_per_iteration_and_survives_resume(tmp_path: Path, alg: str, stat: str) -> None:
    import shutil

    config = write_small_config(tmp_path, n_iters=4, eval_every=2, save_every=2, base=TASK / f"tiny_gpt2_{alg}.yml")
    base_lr = yaml.safe_load(config.read_text())["alg"]["args"]["learning_rate"]
    args = ["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name", alg,
            "--override", "alg.args.lr_scheduler_type=linear"]
    assert main(args) == 0
    run = tmp_path / alg
    first = [yaml.safe_load(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    # CleanRL's anneal_lr: iteration i (1-based) of 4 updates with (1 - (i - 1) / 4) of the rate.
    assert [s[stat] for s in first] == pytest.approx([base_lr * f for f in (1.0, 0.75, 0.5, 0.25)])
    shutil.rmtree(run / "checkpoints" / "checkpoint_000004")  # as if killed after iteration 2's checkpoint
    (run / "run_complete.json").unlink()
    assert main(args) == 0
    second = [yaml.safe_load(line) for line in (run / "training_info.jsonl").read_text().splitlines()]
    assert [s[stat] for s in second] == [s[stat] for s in first]
