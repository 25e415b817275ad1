"""The settings mapping and the summaries of scripts/bench/trl_grpo_parity.py (the bench itself runs
TRL in a side venv and is not part of the tests)."""
import importlib.util
import sys
from pathlib import Path

import pytest

from rl4lms.config import validate_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "trl_grpo_parity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("trl_grpo_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_both_sides_get_the_same_settings(bench):
    settings = bench.Settings(model="tiny-gpt2", prompts=8, generations=4, new_tokens=64, steps=5, beta=0.04,
                              loss_type="bnpo", scale_rewards="batch", learning_rate=3e-4, temperature=0.9)
    config = validate_config(bench.project_config(settings))
    trl = bench.trl_arguments(settings, "/tmp/out")
    alg, generation = config["alg"]["args"], config["alg"]["policy"]["args"]["generation_kwargs"]
    # One generation batch (prompts x generations completions) is one optimizer step on both sides.
    assert config["env"]["n_envs"] * alg["num_generations"] == alg["batch_size"] == 32
    assert trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"] == 32
    assert alg["n_steps"] * config["env"]["n_envs"] <= 32 * 64  # the rollout is that one batch
    assert trl["num_generations"] == alg["num_generations"] == 4
    assert alg["num_iterations"] == trl["num_iterations"] == 1
    # Completions of exactly new_tokens tokens.
    assert generation["min_new_tokens"] == generation["max_new_tokens"] == config["env"]["args"]["max_episode_length"]
    assert trl["generation_kwargs"]["min_new_tokens"] == trl["max_completion_length"] == 64
    for ours, theirs in (("loss_type", "loss_type"), ("beta", "beta"), ("epsilon", "epsilon"),
                         ("scale_rewards", "scale_rewards"), ("learning_rate", "learning_rate"),
                         ("max_grad_norm", "max_grad_norm")):
        assert alg[ours] == trl[theirs], ours
    assert generation["temperature"] == trl["temperature"] == 0.9
    assert (generation["top_k"], generation["top_p"]) == (trl["top_k"], trl["top_p"]) == (0, 1.0)
    assert config["alg"]["policy"]["args"]["weight_decay"] == trl["weight_decay"] == 0.0
    assert trl["lr_scheduler_type"] == "constant" and trl["max_steps"] == 5 and not trl["shuffle_dataset"]


def test_step_prompts_walk_the_samples_in_order_and_wrap(bench):
    samples = list(range(10))
    assert bench.step_prompts(samples, 0, 4) == [0, 1, 2, 3]
    assert bench.step_prompts(samples, 2, 4) == [8, 9, 0, 1]


def test_statistics_compare_within_tolerance_and_show_one_sided_ones(bench):
    rows = {r["statistic"]: r for r in bench.compare_statistics({"loss": 1.0, "reward": 0.5, "kl": 0.1},
                                                                {"loss": 1.0 + 1e-7, "reward": 0.6})}
    assert rows["loss"]["within_tolerance"] is True
    assert rows["reward"]["within_tolerance"] is False and rows["reward"]["abs_diff"] == pytest.approx(0.1)
    assert rows["kl"]["trl"] is None and rows["kl"]["within_tolerance"] is None
    assert "entropy" not in rows


def test_timing_leaves_out_each_process_first_step_and_takes_the_median_round_ratio(bench):
    def steps(*seconds):
        return [{"step_s": s, "generation_s": s / 2, "scoring_s": 0.0, "update_s": s / 2, "step_cpu_s": 2 * s,
                 "generation_cpu_s": s, "scoring_cpu_s": 0.0, "update_cpu_s": s} for s in seconds]

    summary = bench.timing_summary({"ours": [steps(9.0, 1.0, 1.0), steps(9.0, 2.0, 2.0), steps(9.0, 1.0, 1.0)],
                                    "trl": [steps(9.0, 3.0, 3.0), steps(9.0, 3.0, 3.0), steps(9.0, 2.0, 2.0)]})
    assert summary["per_round_ratio"] == [3.0, 1.5, 2.0]
    assert summary["ratio"] == 2.0
    assert summary["medians"]["ours"]["step_s"] == 1.0 and summary["medians"]["trl"]["update_s"] == 1.5
    assert summary["cpu_ratio"] == 2.0 and summary["medians"]["trl"]["step_cpu_s"] == 6.0
    assert "vllm_ratio" not in summary

    with_vllm = bench.timing_summary({"ours": [steps(9.0, 1.0)], "trl": [steps(9.0, 3.0)],
                                      "ours_vllm": [steps(9.0, 0.5)]})
    assert with_vllm["ratio"] == 3.0 and with_vllm["vllm_ratio"] == 6.0 and with_vllm["vllm_cpu_ratio"] == 6.0
    parity = {"statistics": [], "prompt_ids_match": True,
              "weights": {"max_abs_weight_diff": 0.0, "tensors_compared": 1, "max_abs_weight_change": 0.0,
                          "relative_update_diff": 0.0}}
    report = bench.markdown([{"settings": {"model": "tiny-gpt2", "prompts": 1, "generations": 1, "new_tokens": 1,
                                           "steps": 2},
                              "timing": with_vllm, "parity": parity,
                              "reward_curve": {"ours": [0.1], "trl": [0.2], "ours_vllm": [0.3]}}])
    assert "trl / (ours + vLLM) step time, median of the per-round ratios: **6.00**" in report
    assert "| reward, rl4lms + vLLM | 0.300 |" in report


def test_the_vllm_side_samples_with_the_engine_and_the_others_with_generate(bench):
    settings = bench.Settings(model="smollm2")
    assert "generation_engine" not in bench.project_config(settings)["alg"]["policy"]["args"]
    args = bench.project_config(settings, "vllm")["alg"]["policy"]["args"]
    assert args["generation_engine"] == "vllm" and args["vllm"]["dtype"] == "bfloat16"


def test_a_step_record_splits_the_step_into_generation_scoring_and_the_rest(bench):
    record = bench.step_record({"step_s": 10.0, "generation_s": 6.0, "scoring_s": 1.0, "step_cpu_s": 5.0,
                                "generation_cpu_s": 3.0}, {"loss": 0.5})
    assert record["update_s"] == 3.0 and record["update_cpu_s"] == 2.0 and record["scoring_cpu_s"] == 0.0
    assert record["stats"] == {"loss": 0.5}
