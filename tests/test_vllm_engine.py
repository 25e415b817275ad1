"""The generation engine option: vLLM samples as Hugging Face ``generate`` does, takes the actor's
weights after every change, is reproducible from the run's seed, and a killed vLLM run resumes
exactly. Tests marked ``vllm`` need vLLM (skipped without it; .ci/run's vLLM step runs them)."""
from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO, require_vllm, write_small_config
from gymnasium import spaces
from transformers import GenerationConfig, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from rl4lms.algorithms.buffer import RolloutBatch, concat_batches, with_advantages
from rl4lms.algorithms.rollout import RolloutStats, truncated_importance_weights
from rl4lms.generation.engine import HFGenerateEngine, build_engine
from rl4lms.generation.vllm_engine import VLLMOptions, sampling_params_kwargs
from rl4lms.policies.base import response_mask_after_eos
from rl4lms.policies.causal import CausalLMActorCriticPolicy

GRPO_CONFIG = REPO / "task_configs" / "synthetic_arithmetic" / "tiny_gpt2_grpo_vllm.yml"
PROMPTS = ["the one two three", "a date on", "four five six seven eight", "then is"]


def make_policy(tokenizer, engine: str = "hf", **kwargs) -> CausalLMActorCriticPolicy:
    space = spaces.Discrete(len(tokenizer))
    return CausalLMActorCriticPolicy(space, space, lambda _: 1e-3, "rl4lms/tiny-gpt2", tokenizer,
                                     generation_kwargs={"do_sample": True, "top_k": 0, "max_new_tokens": 10},
                                     generation_engine=engine, **kwargs)


# --- without vLLM: options, settings mapping, the correction's math ---------------------------------
def test_engine_choice_and_options_are_checked(tiny_tokenizer) -> None:
    policy = make_policy(tiny_tokenizer)
    assert isinstance(policy.engine, HFGenerateEngine) and policy.engine.importance_sampling_cap is None
    with pytest.raises(ValueError, match="generation_engine 'sglang' is not one of hf, vllm"):
        build_engine(policy, "sglang")
    with pytest.raises(ValueError, match="policy.args.vllm is set but"):
        build_engine(policy, "hf", {"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="unknown option.*kv_cache.*valid: dtype"):
        VLLMOptions.from_config({"kv_cache": 2})
    with pytest.raises(ValueError, match="importance_sampling_cap must be >= 1"):
        VLLMOptions.from_config({"importance_sampling_cap": 0.5})


def test_refusals_name_the_reason(tiny_tokenizer) -> None:
    from rl4lms.policies.maskable import MaskableCausalLMActorCriticPolicy
    from rl4lms.policies.seq2seq import Seq2SeqLMActorCriticPolicy

    space = spaces.Discrete(len(tiny_tokenizer))
    with pytest.raises(ValueError, match="encoder-decoder: use generation_engine: hf"):
        Seq2SeqLMActorCriticPolicy(space, space, lambda _: 1e-3, "rl4lms/tiny-t5", tiny_tokenizer,
                                   generation_engine="vllm")
    with pytest.raises(ValueError, match="per-step action masks \\(NLPO\\)"):
        MaskableCausalLMActorCriticPolicy(space, space, lambda _: 1e-3, "rl4lms/tiny-gpt2", tiny_tokenizer,
                                          generation_engine="vllm")


def test_sampling_settings_map_onto_vllm() -> None:
    sampled = sampling_params_kwargs(GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
                                                      max_new_tokens=12, min_new_tokens=3, eos_token_id=2))
    assert sampled == {"max_tokens": 12, "min_tokens": 3, "ignore_eos": True, "stop_token_ids": [2],
                       "repetition_penalty": 1.0, "logprobs": 0, "detokenize": False, "temperature": 0.7,
                       "top_k": 5, "top_p": 0.9, "min_p": 0.0}
    greedy = sampling_params_kwargs(GenerationConfig(do_sample=False, top_k=None, max_new_tokens=4, eos_token_id=[]))
    assert greedy["temperature"] == 0.0 and greedy["stop_token_ids"] == [] and "top_k" not in greedy
    assert sampling_params_kwargs(GenerationConfig(do_sample=True, top_k=None, max_new_tokens=1))["top_k"] == 0
    with pytest.raises(ValueError, match="num_beams is not supported by the vLLM engine"):
        sampling_params_kwargs(GenerationConfig(num_beams=4, max_new_tokens=4))


def test_importance_weights_scale_advantages_and_are_reported() -> None:
    log_probs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    engine = torch.tensor([[-1.5, -0.5, 0.0], [-0.5, -0.4, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    weights = truncated_importance_weights(log_probs, engine, mask, cap=1.5)
    expected = torch.tensor([[1.5, torch.exp(torch.tensor(-1.5)), 1.0], [1.0, torch.exp(torch.tensor(-0.1)), 1.5]])
    assert torch.allclose(weights, expected)
    zeros = torch.zeros(2, 3)
    batch = RolloutBatch(prompt_ids=torch.ones(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
                         response_ids=torch.ones(2, 3, dtype=torch.long), response_mask=mask.long(),
                         log_probs=log_probs * mask, ref_log_probs=zeros, values=zeros, rewards=zeros, kl=zeros,
                         scores=torch.zeros(2), engine_log_probs=engine * mask, importance_weights=weights)
    joined = concat_batches([batch, batch.select(torch.tensor([0]))], pad_token_id=0)
    assert joined.importance_weights[2].tolist() == pytest.approx(weights[0].tolist())
    assert torch.equal(with_advantages(batch, torch.ones(2, 3)).advantages, weights)
    stats = RolloutStats(0.0, importance_sampling_cap=1.5)
    stats.add(batch, 0)
    summary = stats.summary()
    diffs = torch.tensor([0.5, -1.5, 0.0, -0.1, 2.5])
    assert summary["rollout_info/engine_logprob_abs_diff_max"] == pytest.approx(2.5)
    assert summary["rollout_info/engine_logprob_abs_diff_mean"] == pytest.approx(float(diffs.abs().mean()))
    assert summary["rollout_info/engine_kl"] == pytest.approx(float((diffs.exp() - 1 - diffs).mean()))
    assert summary["rollout_info/engine_is_capped_frac"] == pytest.approx(2 / 5)
    plain = RolloutStats(0.0)
    plain.add(replace(batch, engine_log_probs=None, importance_weights=None), 0)
    assert not [name for name in plain.summary() if "engine" in name]


# --- with vLLM ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_policy(tiny_tokenizer):
    require_vllm()
    torch.set_num_threads(1)
    policy = make_policy(tiny_tokenizer, "vllm", vllm={"dtype": "float32", "kv_cache_gib": 0.25})
    yield policy
    policy.engine.close()


def prompts(tokenizer):
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return encoded.input_ids, encoded.attention_mask


def first_episode(tokens: torch.Tensor, eos: int) -> list:
    """Each row's tokens up to and including the first ``eos``."""
    mask = response_mask_after_eos(tokens, eos, True)
    return [row[:n] for row, n in zip(tokens.tolist(), mask.sum(1).tolist())]


@pytest.mark.vllm
def test_greedy_eos_and_min_new_tokens_match_generate(vllm_policy, tiny_tokenizer) -> None:
    ids, mask = prompts(tiny_tokenizer)
    hf = HFGenerateEngine(vllm_policy)
    torch.manual_seed(1)
    with torch.no_grad():  # the random-init model repeats one token; noise varies its greedy outputs
        for parameter in vllm_policy.model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    config = vllm_policy.generation_config({"do_sample": False, "max_new_tokens": 8}, replace_policy_kwargs=True)
    free = GenerationConfig(**{**config.to_dict(), "eos_token_id": []})
    reference = hf.generate(ids, mask, free).response_ids
    assert torch.equal(vllm_policy.engine.generate(ids, mask, free).response_ids, reference)
    assert reference.shape[1] == 8
    # Stopping: a token greedy decoding first emits at position j >= 2 plays EOS; min_new_tokens
    # forbids it before 5 tokens.
    row, j = next((r, j) for r, tokens in enumerate(reference.tolist()) for j in range(2, 8)
                  if tokens[j] not in tokens[:j])
    eos = int(reference[row, j])
    for extra in ({}, {"min_new_tokens": 5}):
        stop = GenerationConfig(**{**config.to_dict(), "eos_token_id": eos, **extra})
        ours = first_episode(vllm_policy.engine.generate(ids, mask, stop).response_ids, eos)
        theirs = first_episode(hf.generate(ids, mask, stop).response_ids, eos)
        assert ours == theirs
        assert len(ours[row]) == j + 1 if not extra else min(len(episode) for episode in ours) >= 5


@pytest.mark.vllm
@pytest.mark.parametrize("settings", [{"temperature": 0.7, "top_k": 0}, {"top_k": 5}, {"top_p": 0.8, "top_k": 0},
                                      {"temperature": 1.3, "top_k": 20, "top_p": 0.9}])
def test_sampling_distribution_matches_generate(vllm_policy, tiny_tokenizer, settings) -> None:
    """vLLM's log-prob of every token it sampled equals the probability Hugging Face's warpers give
    it (temperature, then top-k, then top-p): both engines sample from the same distribution."""
    ids, mask = prompts(tiny_tokenizer)
    config = vllm_policy.generation_config({"do_sample": True, "max_new_tokens": 6, **settings},
                                           replace_policy_kwargs=True)
    torch.manual_seed(0)
    sampled = vllm_policy.sample_actions(ids, mask, config)
    logits, _ = vllm_policy._forward(vllm_policy.model, ids, mask, sampled.response_ids, sampled.response_mask,
                                     want_hidden=False)
    scores = logits.reshape(-1, logits.shape[-1])
    warpers = [TemperatureLogitsWarper(config.temperature or 1.0)]
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    for warper in warpers:
        scores = warper(None, scores)
    expected = torch.log_softmax(scores, -1).gather(-1, sampled.response_ids.reshape(-1, 1)).reshape(logits.shape[:2])
    valid = sampled.response_mask.bool()
    assert torch.isfinite(expected[valid]).all()  # every sampled token is inside HF's kept set
    assert torch.allclose(sampled.engine_log_probs[valid], expected[valid], atol=1e-4)


@pytest.mark.vllm
def test_seeds_come_from_torch_and_weights_follow_the_actor(vllm_policy, tiny_tokenizer) -> None:
    ids, mask = prompts(tiny_tokenizer)
    config = vllm_policy.generation_config(max_new_tokens=10)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(vllm_policy.sample_actions(ids, mask, config).response_ids)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # Training changes the weights in place: the next generation uses them, and the trainer's own
    # log-probs of the engine's tokens agree with the engine's (float32 on both sides).
    with torch.no_grad():
        for parameter in vllm_policy.model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    torch.manual_seed(3)
    sampled = vllm_policy.sample_actions(ids, mask, config)
    assert not torch.equal(sampled.response_ids, runs[0])
    out = vllm_policy.rollout_outputs(ids, mask, sampled)
    valid = sampled.response_mask.bool()
    assert torch.allclose(out.log_probs[valid], sampled.engine_log_probs[valid], atol=1e-4)
    # An optimizer step (torch's fused AdamW, which leaves the tensors' version counters alone) too.
    assert vllm_policy.optimizer.defaults.get("fused")
    for group in vllm_policy.optimizer.param_groups:
        group["lr"] = 0.05
    loss = -vllm_policy.evaluate_episodes(ids, mask, sampled.response_ids, sampled.response_mask).log_probs.sum()
    vllm_policy.optimizer.zero_grad()
    loss.backward()
    vllm_policy.optimizer.step()
    stale = sampled.engine_log_probs
    torch.manual_seed(3)
    sampled = vllm_policy.sample_actions(ids, mask, config)
    out = vllm_policy.rollout_outputs(ids, mask, sampled)
    valid = sampled.response_mask.bool()
    assert torch.allclose(out.log_probs[valid], sampled.engine_log_probs[valid], atol=1e-4)
    assert not torch.allclose(sampled.engine_log_probs, stale, atol=1e-3)  # the engine has the new weights


@pytest.mark.vllm
def test_lora_actor_sends_merged_weights(vllm_policy, tiny_tokenizer) -> None:
    vllm_policy.engine.close()  # one engine at a time in this process
    policy = make_policy(tiny_tokenizer, "vllm", vllm={"dtype": "float32", "kv_cache_gib": 0.25},
                         peft_config={"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]})
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    ids, mask = prompts(tiny_tokenizer)
    torch.manual_seed(0)
    sampled = policy.sample_actions(ids, mask, policy.generation_config(max_new_tokens=6))
    out = policy.rollout_outputs(ids, mask, sampled)
    valid = sampled.response_mask.bool()
    assert torch.allclose(out.log_probs[valid], sampled.engine_log_probs[valid], atol=1e-4)
    policy.engine.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_vllm_run_resumes_and_matches_uninterrupted_run(tmp_path: Path) -> None:
    from test_trainer_resume import _command, _env, _jsonl, kill_after_checkpoint

    config = write_small_config(tmp_path, n_iters=12, eval_every=4, save_every=4, base=GRPO_CONFIG,
                                alg_args={"num_generations": 4, "n_steps": 4, "batch_size": 16})
    straight = subprocess.run(_command(config, tmp_path, "straight"), env=_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = kill_after_checkpoint(config, tmp_path, "killed", 4, timeout=600)
    resumed = subprocess.run(_command(config, tmp_path, "killed"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (run / "log.txt").read_text()
    rollouts = _jsonl(run / "rollout_info.jsonl")
    reference = _jsonl(tmp_path / "straight" / "rollout_info.jsonl")
    assert [r["iteration"] for r in rollouts] == list(range(1, 13))
    assert "rollout_info/engine_kl" in rollouts[0]  # the engine's mismatch is logged
    assert rollouts == reference
    assert _jsonl(run / "training_info.jsonl") == _jsonl(tmp_path / "straight" / "training_info.jsonl")
    assert _jsonl(run / "val_split_metrics.jsonl") == _jsonl(tmp_path / "straight" / "val_split_metrics.jsonl")
    weights = "model/model.safetensors"
    assert (run / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()
    assert json.loads((run / "run_complete.json").read_text())["iterations"] == 12


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_each_process_of_a_two_process_run_samples_with_the_whole_current_weights(tmp_path: Path,
                                                                                   sharding: str) -> None:
    from test_distributed import _env, _jsonl, _summary, _train_command, _with_accelerator

    config = write_small_config(tmp_path, n_iters=2, eval_every=2, save_every=2, base=GRPO_CONFIG,
                                alg_args={"n_steps": 2})
    config = _with_accelerator(config, "run.yml", **({"sharding": "fsdp"} if sharding == "fsdp" else {}))
    result = subprocess.run(_train_command(config, tmp_path, "run"), env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr  # the engines shut down before the process group went down
    distributed = _summary(tmp_path / "run")["distributed"]
    assert distributed["sharding"] == sharding
    checksums = distributed["trainable_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    rollouts = _jsonl(tmp_path / "run" / "rollout_info.jsonl")
    assert [r["iteration"] for r in rollouts] == [1, 2]
    # float32 in both engines: each process's largest trainer-vLLM log-prob difference (averaged over the
    # processes) stays at rounding level only if every engine holds the actor's whole weights after the update.
    assert all(r["rollout_info/engine_logprob_abs_diff_max"] < 1e-4 for r in rollouts)
