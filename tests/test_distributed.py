"""accelerate: a 2-process (gloo) run ends with identical weights; gradient accumulation; bf16 on CPU."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from accelerate import Accelerator

from conftest import REPO, write_small_config
from test_rollout import LengthReward, make_ppo
from test_trainer_resume import _files

SCRIPT = REPO / "scripts" / "training" / "train_text_generation.py"
GRPO_CONFIG = REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_grpo.yml"
ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _launch(script: Path, *args: str) -> list:
    """``accelerate launch`` of ``script`` in 2 CPU processes (gloo) on a free port."""
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), *args]


def _train_command(config: Path, base: Path, name: str) -> list:
    return _launch(SCRIPT, "--config_path", str(config), "--base_path_to_store_results", str(base),
                   "--experiment_name", name)


def _with_accelerator(config: Path, name: str, **settings) -> Path:
    """A copy of ``config`` with the given ``accelerator`` section."""
    raw = yaml.safe_load(config.read_text())
    raw["accelerator"] = settings
    path = config.with_name(name)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same 4-iteration PPO run in 2 processes, with DDP (``ddp``) and with FSDP (``fsdp``)."""
    if ACCELERATE is None:
        pytest.skip("the accelerate launcher is not installed")
    base = tmp_path_factory.mktemp("two_processes")
    config = write_small_config(base, n_iters=4, eval_every=2, save_every=1)
    configs = {"ddp": config, "fsdp": _with_accelerator(config, "fsdp.yml", sharding="fsdp")}
    runs = {"base": base, "configs": configs}
    for name, path in configs.items():
        result = subprocess.run(_train_command(path, base, name), env=_env(), capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = result
    return runs


def _summary(run: Path) -> dict:
    return json.loads((run / "run_complete.json").read_text())


def _jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_and_one_writer(two_process_runs: dict) -> None:
    run = two_process_runs["base"] / "ddp"
    summary = _summary(run)
    checksums = summary["distributed"]["trainable_weight_checksums"]
    assert summary["distributed"]["num_processes"] == 2 and len(checksums) == 2
    assert checksums[0] == checksums[1]  # gradients were all-reduced: the ranks hold the same model
    assert two_process_runs["ddp"].stdout.count("Results of") == 1  # only the main process reports and writes
    assert (run / "log.txt").read_text().count("run complete;") == 1
    assert [record["iteration"] for record in _jsonl(run / "rollout_info.jsonl")] == [1, 2, 3, 4]
    # Each process's prompt sampler and generators are in the checkpoint, so each resumes with its own.
    state = torch.load(run / "checkpoints" / "checkpoint_000004" / "trainer_state.pt", weights_only=False)
    ranks = state["ranks"]
    assert len(ranks) == 2 and ranks[0]["sampler"] == state["sampler"]
    assert ranks[0]["sampler"] != ranks[1]["sampler"]


FSDP_TOLERANCE = 1e-6
"""Largest absolute difference allowed between FSDP's and DDP's weights after the same 4 iterations:
both average the same gradients, summed in another order (reduce-scatter of shards against an
all-reduce of buckets; measured: 3.3e-8)."""


def _model_tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return {**load_file(str(run / "model" / "model.safetensors")),
            **{f"value_head.{k}": v for k, v in load_file(str(run / "model" / "value_head.safetensors")).items()}}


def test_fsdp_holds_half_of_the_state_per_process_and_matches_ddp(two_process_runs: dict) -> None:
    from transformers import AutoModelForCausalLM

    base = two_process_runs["base"]
    ddp, fsdp = _summary(base / "ddp")["distributed"], _summary(base / "fsdp")["distributed"]
    assert fsdp["sharding"] == "fsdp" and ddp["sharding"] == "ddp"
    checksums = fsdp["trainable_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # both processes gather the same model
    full = ddp["memory_per_process"][0]["full_parameter_bytes"]
    assert [m["full_parameter_bytes"] for m in fsdp["memory_per_process"]] == [full, full]
    for key in ("parameter_bytes", "trainable_parameter_bytes", "optimizer_state_bytes"):
        whole = ddp["memory_per_process"][0][key]
        assert all(m[key] == whole for m in ddp["memory_per_process"])  # DDP: a full copy in each process
        shards = [m[key] for m in fsdp["memory_per_process"]]
        # FSDP: about half in each process (a shard is padded to a whole number of rows)
        assert all(abs(shard - whole / 2) <= 0.01 * whole for shard in shards), (key, shards, whole)
    assert two_process_runs["fsdp"].stdout.count("Results of") == 1
    # Same prompts, same samples, nearly the same update.
    ddp_rollouts, fsdp_rollouts = (_jsonl(base / name / "rollout_info.jsonl") for name in ("ddp", "fsdp"))
    assert [r["rollout_info/ep_rew"] for r in fsdp_rollouts] == [r["rollout_info/ep_rew"] for r in ddp_rollouts]
    ddp_weights, fsdp_weights = _model_tensors(base / "ddp"), _model_tensors(base / "fsdp")
    assert ddp_weights.keys() == fsdp_weights.keys()
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], tensor, rtol=0, atol=FSDP_TOLERANCE)
    # The final folder is a plain save_pretrained folder of the gathered weights.
    model = AutoModelForCausalLM.from_pretrained(base / "fsdp" / "model")
    assert torch.equal(model.transformer.wte.weight, fsdp_weights["transformer.wte.weight"])
    # Checkpoints have the layout of unsharded ones: whole tensors, the optimizer state by index.
    ddp_state, fsdp_state = (torch.load(base / name / "checkpoints" / "checkpoint_000004" / "trainer_state.pt",
                                        weights_only=True) for name in ("ddp", "fsdp"))
    assert fsdp_state["policy"].keys() == ddp_state["policy"].keys()
    assert all(fsdp_state["policy"][k].shape == v.shape for k, v in ddp_state["policy"].items())
    assert fsdp_state["optimizer"]["state"].keys() == ddp_state["optimizer"]["state"].keys()
    assert [g["params"] for g in fsdp_state["optimizer"]["param_groups"]] == \
        [g["params"] for g in ddp_state["optimizer"]["param_groups"]]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["everything", "launcher_group"])
def test_killed_fsdp_run_resumes_as_if_never_interrupted(two_process_runs: dict, kill: str) -> None:
    """SIGKILL to the launcher and both training processes, or to the launcher's process group
    only (torchrun starts each worker in a session of its own: they stop at the next iteration
    boundary by themselves). The rerun ends byte-identical to the uninterrupted run."""
    base, config = two_process_runs["base"], two_process_runs["configs"]["fsdp"]
    name = f"killed_{kill}"
    run = base / name
    stderr = base / f"{name}.stderr"
    with open(stderr, "w") as errors:  # the training processes write to it after the launcher is gone
        process = subprocess.Popen(_train_command(config, base, name), env=_env(), stdout=subprocess.DEVNULL,
                                   stderr=errors, start_new_session=True)
    checkpoint = run / "checkpoints" / "checkpoint_000002"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    workers = psutil.Process(process.pid).children(recursive=True)
    if kill == "everything":
        for member in [*workers, psutil.Process(process.pid)]:
            member.send_signal(signal.SIGKILL)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=120)
    assert not alive, "training processes outlived their launcher"
    assert not (run / "run_complete.json").exists(), "the run finished before it could be killed"
    if kill == "launcher_group":
        stops = [line for line in stderr.read_text().splitlines() if line.startswith("error: ")]
        assert len(stops) == 1, stderr.read_text()[-3000:]
        assert stops[0].startswith("error: training stopped: the launcher of this 2-process run is gone: stopped "
                                   "after iteration") and "rerun the same command to continue from checkpoint_" in stops[0]

    resumed = subprocess.run(_train_command(config, base, name), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (run / "log.txt").read_text()
    straight = base / "fsdp"
    ours, reference = _jsonl(run / "rollout_info.jsonl"), _jsonl(straight / "rollout_info.jsonl")
    assert [r["iteration"] for r in ours] == [1, 2, 3, 4]
    assert ours == reference  # weights, optimizer, KL controller and every process's RNG were restored
    # Checkpoints written after the resume (optimizer settings included) and the final model: same bytes.
    for folder in ("checkpoints", "model"):
        assert _files(run / folder) == _files(straight / folder), folder


@pytest.mark.slow
@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_every_process_of_a_run_refused_by_the_lock_exits_alike(tmp_path: Path) -> None:
    from rl4lms.errors import RunLockedError
    from rl4lms.training.run_lock import RunLock

    config = write_small_config(tmp_path, n_iters=1, eval_every=1, save_every=1)
    (tmp_path / "run").mkdir()
    lock = RunLock(tmp_path / "run").acquire()  # another trainer holds the folder
    try:
        result = subprocess.run(_train_command(config, tmp_path, "run"), env=_env(), capture_output=True, text=True,
                                timeout=600)
    finally:
        lock.release()
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path / 'run'} is being trained by another process; wait for it or use another "
                      "--experiment_name"], result.stderr[-3000:]
    # No process dies in a collective; the only traceback is the launcher's report of the exit statuses ...
    assert "gloo" not in result.stderr.lower()
    assert result.stderr.count("Traceback (most recent call last)") == 1 and "ChildFailedError" in result.stderr
    # ... which lists each process with the lock's exit status.
    statuses = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", result.stderr))
    locked = str(RunLockedError.exit_status)
    assert statuses == {"0": locked, "1": locked}, result.stderr[-3000:]


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_a_single_process(two_process_runs: dict, tmp_path: Path) -> None:
    """Checkpoints hold the whole state: another process count (here one, unsharded) continues the run."""
    base = two_process_runs["base"]
    run = tmp_path / "fsdp"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(base / "fsdp" / "config.json", run / "config.json")
    shutil.copytree(base / "fsdp" / "checkpoints" / "checkpoint_000003", run / "checkpoints" / "checkpoint_000003")
    command = [sys.executable, str(SCRIPT), "--config_path", str(two_process_runs["configs"]["fsdp"]),
               "--base_path_to_store_results", str(tmp_path), "--experiment_name", "fsdp"]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one process: it trains unsharded" in result.stderr
    assert "resumed from" in (run / "log.txt").read_text()
    assert [r["iteration"] for r in _jsonl(run / "rollout_info.jsonl")] == [4]


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
@pytest.mark.slow
def test_grpo_in_two_processes_keeps_the_weights_equal(tmp_path: Path, sharding: str) -> None:
    # Batch-wide reward scaling, dapo's all-process token count and dynamic sampling (the processes
    # keep different numbers of groups, then agree on the smallest) all talk across processes; under
    # FSDP the policy has no value head and a sharded reference (beta > 0).
    config = write_small_config(tmp_path, n_iters=2, eval_every=2, save_every=2, base=GRPO_CONFIG,
                                alg_args={"num_generations": 4, "scale_rewards": "batch", "loss_type": "dapo",
                                          "dynamic_sampling": True, "n_steps": 36, "beta": 0.01})
    config = _with_accelerator(config, f"grpo_{sharding}.yml", sharding=sharding)
    result = subprocess.run(_train_command(config, tmp_path, "grpo"), env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = _summary(tmp_path / "grpo")["distributed"]
    assert distributed["sharding"] == sharding
    checksums = distributed["trainable_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    records = _jsonl(tmp_path / "grpo" / "training_info.jsonl")
    assert len(records) == 2 and all(r["kl"] >= 0 for r in records)
    assert not (tmp_path / "grpo" / "model" / "value_head.safetensors").exists()


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


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(tmp_path: Path) -> None:
    config = _with_accelerator(write_small_config(tmp_path, n_iters=2, eval_every=2, save_every=2), "bf16.yml",
                               mixed_precision="bf16", gradient_accumulation_steps=2)
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
@pytest.mark.slow
def test_trl_ppo_trainer_in_two_cpu_processes_keeps_the_weights_equal(tmp_path: Path) -> None:
    script = tmp_path / "trl_two_processes.py"
    script.write_text(TRL_SCRIPT)
    result = subprocess.run(_launch(script), env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(list(found) for found in re.findall(r"RESULT (\d) (\d) ([0-9a-f]{32})", result.stdout))
    assert [line[:2] for line in lines] == [["0", "2"], ["1", "2"]]
    assert lines[0][2] == lines[1][2]  # different queries per process, one all-reduced update
