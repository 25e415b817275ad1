"""accelerate: a 2-process (gloo) run ends with identical weights; gradient accumulation; bf16 on CPU."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator

from conftest import REPO, write_small_config
from test_rollout import LengthReward, make_ppo

SCRIPT = REPO / "scripts" / "training" / "train_text_generation.py"
GRPO_CONFIG = REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_grpo.yml"
ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _launch_two_processes(config: Path, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(SCRIPT), "--config_path", str(config), "--base_path_to_store_results", str(tmp_path),
               "--experiment_name", name]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _rank_checksums(run: Path) -> list:
    summary = json.loads((run / "run_complete.json").read_text())
    checksums = summary["distributed"]["trainable_weight_checksums"]
    assert summary["distributed"]["num_processes"] == 2 and len(checksums) == 2
    return checksums


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_two_processes_end_with_identical_weights_and_one_writer(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1)
    result = _launch_two_processes(config, tmp_path, "ddp")
    run = tmp_path / "ddp"
    checksums = _rank_checksums(run)
    assert checksums[0] == checksums[1]  # gradients were all-reduced: the ranks hold the same model
    assert result.stdout.count("Results of") == 1  # only the main process reports and writes
    assert (run / "log.txt").read_text().count("run complete;") == 1
    assert [json.loads(line)["iteration"] for line in (run / "rollout_info.jsonl").read_text().splitlines()] == [1, 2]
    # Each process's prompt sampler and generators are in the checkpoint, so each resumes with its own.
    state = torch.load(run / "checkpoints" / "checkpoint_000002" / "trainer_state.pt", weights_only=False)
    ranks = state["ranks"]
    assert len(ranks) == 2 and ranks[0]["sampler"] == state["sampler"]
    assert ranks[0]["sampler"] != ranks[1]["sampler"]


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_grpo_in_two_processes_keeps_the_weights_equal(tmp_path: Path) -> None:
    # Batch-wide reward scaling, dapo's all-process token count and dynamic sampling (the processes
    # keep different numbers of groups, then agree on the smallest) all talk across processes.
    config = write_small_config(tmp_path, n_iters=2, eval_every=2, save_every=2, base=GRPO_CONFIG,
                                alg_args={"num_generations": 4, "scale_rewards": "batch", "loss_type": "dapo",
                                          "dynamic_sampling": True, "n_steps": 36, "beta": 0.01})
    _launch_two_processes(config, tmp_path, "grpo")
    checksums = _rank_checksums(tmp_path / "grpo")
    assert checksums[0] == checksums[1]
    records = [json.loads(line) for line in (tmp_path / "grpo" / "training_info.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["kl"] >= 0 for r in records)


def test_each_process_resumes_with_its_own_random_state(tiny_tokenizer, tmp_path: Path) -> None:
    from rl4lms.training.checkpoint import load_checkpoint, process_random_state, save_checkpoint

    alg = make_ppo(tiny_tokenizer, LengthReward())
    own = [process_random_state(alg)]
    alg.collector.draw_samples(5)  # rank 1 has moved on
    torch.rand(3)
    own.append(process_random_state(alg))
    path = save_checkpoint(tmp_path, 1, alg, keep=1, rank_states=own)
    load_checkpoint(path, alg, process_index=0, num_processes=2)
    assert alg.rng_state() == own[0]["sampler"] and torch.equal(torch.get_rng_state(), own[0]["rng"]["torch"])
    load_checkpoint(path, alg, process_index=1, num_processes=2)
    assert alg.rng_state() == own[1]["sampler"] and torch.equal(torch.get_rng_state(), own[1]["rng"]["torch"])


def test_gradient_accumulation_steps_every_n_calls_with_the_mean_gradient(tiny_tokenizer) -> None:
    alg, reference = make_ppo(tiny_tokenizer, LengthReward()), make_ppo(tiny_tokenizer, LengthReward())
    reference.policy.value_head.load_state_dict(alg.policy.value_head.state_dict())
    alg.attach_accelerator(Accelerator(cpu=True, gradient_accumulation_steps=2))
    features = torch.randn(4, alg.policy.value_head.summary.in_features, generator=torch.Generator().manual_seed(0))

    def loss(policy, part: int) -> torch.Tensor:
        values = policy.value_head(features[2 * part:2 * part + 2])
        return (values ** 2).mean() if part == 0 else (3 * values).mean()

    weight = alg.policy.value_head.summary.weight
    start = weight.detach().clone()
    assert torch.isnan(torch.tensor(alg.optimization_step(loss(alg.policy, 0), "loss")))
    assert torch.equal(weight, start), "stepped before the accumulation was complete"
    alg.optimization_step(loss(alg.policy, 1), "loss")
    assert not torch.equal(weight, start)
    # One plain step on the mean of the two losses lands on the same weights.
    reference.optimization_step((loss(reference.policy, 0) + loss(reference.policy, 1)) / 2, "loss")
    torch.testing.assert_close(reference.policy.value_head.summary.weight, weight)

    # A partial accumulation left at the end of an update is applied, not dropped.
    alg.optimization_step(loss(alg.policy, 0), "loss")
    before = weight.detach().clone()
    assert torch.isfinite(torch.tensor(alg.apply_accumulated_gradients()))
    assert not torch.equal(weight, before)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=2, save_every=2)
    raw = yaml.safe_load(config.read_text())
    raw["accelerator"] = {"mixed_precision": "bf16", "gradient_accumulation_steps": 2}
    config.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, str(SCRIPT), "--config_path", str(config), "--base_path_to_store_results",
                             str(tmp_path), "--experiment_name", "bf16"], env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = [json.loads(line) for line in (tmp_path / "bf16" / "training_info.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(torch.isfinite(torch.tensor(s["ppo/loss/total"])) for s in stats)


TRL_SCRIPT = '''
import hashlib, torch
from rl4lms.models.loading import load_tokenizer
from rl4lms.trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
tokenizer = load_tokenizer("rl4lms/tiny-gpt2")
tokenizer.pad_token = tokenizer.eos_token
torch.manual_seed(0)
model = AutoModelForCausalLMWithValueHead.from_pretrained("rl4lms/tiny-gpt2")
trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, learning_rate=1e-3), model, None, tokenizer)
rank = trainer.accelerator.process_index
generator = torch.Generator().manual_seed(rank)  # each process its own queries
queries = [torch.randint(5, 500, (6,), generator=generator) for _ in range(4)]
responses = trainer.generate(queries, return_prompt=False, max_new_tokens=6, do_sample=True,
                             pad_token_id=tokenizer.eos_token_id)
trainer.step(queries, responses, [torch.tensor(float(i + rank)) for i in range(4)])
weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().tobytes()
print(f"RESULT {rank} {trainer.accelerator.num_processes} {hashlib.md5(weights).hexdigest()}", flush=True)
'''


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_trl_ppo_trainer_in_two_cpu_processes_keeps_the_weights_equal(tmp_path: Path) -> None:
    script = tmp_path / "trl_two_processes.py"
    script.write_text(TRL_SCRIPT)
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(script)]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(list(found) for found in re.findall(r"RESULT (\d) (\d) ([0-9a-f]{32})", result.stdout))
    assert [line[:2] for line in lines] == [["0", "2"], ["1", "2"]]
    assert lines[0][2] == lines[1][2]  # different queries per process, one all-reduced update
