"""FSDP2 sharding (``accelerator.sharding: fsdp``): set-up and refusals in one process; generation,
state gathering, and NLPO and supervised T5 runs in 2 CPU processes over gloo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate import DistributedType
from torch import nn

from conftest import REPO, write_small_config
from test_distributed import ACCELERATE, _env, _free_port, _summary, _train_command, _with_accelerator
from test_rollout import LengthReward, make_ppo

from rl4lms.config.validation import validate_config
from rl4lms.errors import ConfigError, DistributedSetupError
from rl4lms.training.distributed import check_launch, make_accelerator
from rl4lms.training.sharding import (FSDPSettings, checkpoint_activations, fsdp_settings, tie_shared_parameters,
                                      transformer_blocks)

TASKS = REPO / "task_configs" / "synthetic_increasing_numbers"


def test_transformer_blocks_are_found_in_gpt2_t5_and_a_plain_module_list(tiny_tokenizer) -> None:
    from transformers import AutoModelForSeq2SeqLM

    from rl4lms.models.loading import load_model

    gpt2 = make_ppo(tiny_tokenizer, LengthReward()).policy.model
    assert transformer_blocks(gpt2) == list(gpt2.transformer.h)
    t5 = load_model(AutoModelForSeq2SeqLM, "rl4lms/tiny-t5")
    assert transformer_blocks(t5) == [*t5.encoder.block, *t5.decoder.block]
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    plain = nn.Sequential(nn.ModuleList([nn.Linear(2, 2)]), nn.Sequential(layers))
    assert transformer_blocks(plain) == list(layers)  # no _no_split_modules: the longest ModuleList


def test_activation_checkpointing_gives_the_same_gradients(tiny_tokenizer) -> None:
    gradients = []
    for checkpointed in (False, True):
        policy = make_ppo(tiny_tokenizer, LengthReward()).policy
        if checkpointed:
            checkpoint_activations(policy.model)
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(5, 400, (2, 8), generator=generator)
        response = torch.randint(5, 400, (2, 4), generator=generator)
        out = policy.evaluate_episodes(prompt, torch.ones_like(prompt), response, torch.ones_like(response))
        (out.log_probs.sum() + out.values.sum()).backward()
        gradients.append({n: p.grad for n, p in policy.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and len(gradients[0]) > 0
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=0, atol=0)


def test_tied_parameters_share_one_tensor_in_a_gathered_state(tiny_tokenizer) -> None:
    model = make_ppo(tiny_tokenizer, LengthReward()).policy.model
    state = {k: v.clone() for k, v in model.state_dict().items()}  # what a gather returns: separate copies
    tie_shared_parameters(model, state)
    assert state["lm_head.weight"] is state["transformer.wte.weight"]


@pytest.mark.parametrize("kind, message", [
    (DistributedType.DEEPSPEED, "DeepSpeed is not supported"),
    (DistributedType.FSDP, "set accelerator.sharding: fsdp"),
])
def test_launches_that_would_not_shard_are_refused(kind, message) -> None:
    accelerator = SimpleNamespace(distributed_type=kind, num_processes=2)
    with pytest.raises(DistributedSetupError, match=message):
        check_launch(accelerator, sharded=False)
    if kind == DistributedType.FSDP:
        check_launch(accelerator, sharded=True)  # with accelerator.sharding: fsdp the launch is fine


def test_accelerates_fsdp_plugin_on_cpu_is_refused_before_it_starts(monkeypatch) -> None:
    # Its plugin fails on CPU (or, configured otherwise, quietly becomes DDP).
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="launch with --multi_gpu or torchrun"):
        make_accelerator({"sharding": "fsdp"}, "cpu")


def test_fsdp_settings_map_mixed_precision_and_a_single_process_trains_unsharded(monkeypatch, caplog) -> None:
    section = {"sharding": "fsdp", "mixed_precision": "bf16", "fsdp": {"reshard_after_forward": False}}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert fsdp_settings(section) is None
    assert "one process: it trains unsharded" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = fsdp_settings(section)
    assert settings == FSDPSettings(reshard_after_forward=False, param_dtype="bfloat16")
    precision = settings.mixed_precision()
    assert precision.param_dtype == torch.bfloat16 and precision.reduce_dtype == torch.float32
    assert fsdp_settings({"sharding": "ddp"}) is None and fsdp_settings({}) is None


@pytest.mark.parametrize("accelerator, error", [
    ({"sharding": "zero3"}, "accelerator.sharding: 'zero3' is not one of None, 'ddp', 'fsdp'"),
    ({"fsdp": {"cpu_offload": True}}, "accelerator.fsdp: these options need accelerator.sharding: fsdp"),
    ({"sharding": "fsdp", "fsdp": {"param_dtype": "float16"}},
     "accelerator.fsdp.param_dtype: 'float16' is not one of None, 'float32', 'bfloat16'"),
    ({"sharding": "fsdp", "mixed_precision": "fp16"},
     "accelerator.mixed_precision: fp16 is not supported with accelerator.sharding: fsdp; use bf16"),
])
def test_bad_sharding_settings_are_one_line_errors(accelerator, error) -> None:
    config = yaml.safe_load((TASKS / "tiny_gpt2_ppo.yml").read_text())
    config["accelerator"] = accelerator
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    assert str(raised.value) == f"invalid config: {error}"


GENERATION_SCRIPT = '''
import copy, json, sys, torch
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from rl4lms.models.loading import load_tokenizer
from rl4lms.training.sharding import FSDPSettings, ShardedPolicy, memory_footprint
from test_rollout import LengthReward, make_ppo
alg = make_ppo(load_tokenizer("rl4lms/tiny-gpt2"), LengthReward())
plain = copy.deepcopy(alg.policy)
accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
alg.attach_accelerator(accelerator, ShardedPolicy(alg.policy, FSDPSettings(), accelerator.device))
policy = alg.policy
prompt = torch.randint(5, 500, (3, 6), generator=torch.Generator().manual_seed(rank))
# Each process decodes another number of tokens: on gathered weights no step waits for the others.
config = policy.generation_config({{"do_sample": False, "max_new_tokens": 2 + 6 * rank}}, replace_policy_kwargs=True)
sharded = policy.generate(prompt, torch.ones_like(prompt), config)[0]
unsharded = plain.generate(prompt, torch.ones_like(prompt), config)[0]
weights, optimizer = alg.sharded.full_state()
expected = plain.trainable_state_dict()
gathered_equal = rank > 0 or (weights.keys() == expected.keys() and all(torch.equal(weights[k], v)
                                                                       for k, v in expected.items()))
shifted = {{k: v + 1 if v.is_floating_point() else v for k, v in expected.items()}}
alg.sharded.load_full_state(shifted, plain.optimizer.state_dict())
reloaded, _ = alg.sharded.full_state()
reloaded_equal = rank > 0 or all(torch.equal(reloaded[k], v) for k, v in shifted.items())
open({out!r} + f"/rank{{rank}}.json", "w").write(json.dumps({{"rank": rank, "tokens": sharded.shape[1], "same_tokens": torch.equal(sharded, unsharded),
      "gathered_equal": gathered_equal, "others_empty": rank == 0 or weights == {{}},
      "reloaded_equal": reloaded_equal, "bytes": memory_footprint(policy)["parameter_bytes"],
      "full_bytes": memory_footprint(plain)["parameter_bytes"]}}))
'''


@pytest.mark.slow
def test_sharded_policy_generates_gathers_and_scatters_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "sharded_generation.py"
    script.write_text(GENERATION_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(script)]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["tokens"] for r in results] == [2, 8]
    for r in results:
        assert r["same_tokens"] and r["gathered_equal"] and r["others_empty"] and r["reloaded_equal"], r
        assert abs(r["bytes"] - r["full_bytes"] / 2) <= 0.01 * r["full_bytes"], r


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
@pytest.mark.parametrize("config_name, policy_args, accelerator", [
    # NLPO with a separate critic LM, activation checkpointing and a mask-model refresh every update.
    ("tiny_gpt2_nlpo.yml", {"shared_backbone": False, "target_update_iterations": 1, "min_tokens_to_keep": 20},
     {"sharding": "fsdp", "fsdp": {"activation_checkpointing": True}}),
    # Supervised T5 (generation starts in the encoder) in bf16, FSDP's mixed precision, with accumulation.
    ("tiny_t5_supervised.yml", {}, {"sharding": "fsdp", "mixed_precision": "bf16",
                                    "gradient_accumulation_steps": 2}),
], ids=["nlpo_critic_checkpointing", "t5_supervised_bf16"])
@pytest.mark.slow
def test_fsdp_runs_nlpo_and_supervised_in_two_processes(tmp_path: Path, config_name: str, policy_args: dict,
                                                       accelerator: dict) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=2, save_every=2, base=TASKS / config_name,
                                policy_args=policy_args)
    config = _with_accelerator(config, "run.yml", **accelerator)
    result = subprocess.run(_train_command(config, tmp_path, "run"), env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = _summary(tmp_path / "run")["distributed"]
    checksums = distributed["trainable_weight_checksums"]
    assert distributed["sharding"] == "fsdp" and checksums[0] == checksums[1]
    for memory in distributed["memory_per_process"]:
        full = memory["full_parameter_bytes"]
        assert abs(memory["parameter_bytes"] - full / 2) <= 0.01 * full
    state = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint_000002" / "trainer_state.pt", weights_only=True)
    weights = state["policy"]
    if "mask_model.lm_head.weight" in weights:  # refreshed after every update: the actor's weights
        actor = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
        assert all(torch.equal(weights[f"mask_model.{k}"], v) for k, v in actor.items())
        assert int(weights["updates_since_mask_refresh"]) == 0
        assert (tmp_path / "run" / "model" / "critic" / "value_head.safetensors").is_file()
