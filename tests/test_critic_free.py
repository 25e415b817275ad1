"""Critic-free, group-sampled algorithms (GRPO, RLOO, REINFORCE++): the advantage estimators and
loss types on hand-worked numbers, then group sampling, dynamic sampling, truncated completions,
memory (no value head, no reference with beta 0), LoRA, weighted rewards and config errors.

Expected numbers are worked out by hand in the comments, not by calling the function under test.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import pytest
import torch
import yaml

from conftest import REPO, write_small_config
from rl4lms.algorithms.advantages import (discounted_returns, flat_groups, group_relative_advantages,
                                          leave_one_out_advantages, token_kl)
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.grpo import GRPO
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.losses import aggregate_token_losses, clipped_surrogate, importance_ratio
from rl4lms.algorithms.reinforce_plus_plus import ReinforcePlusPlus
from rl4lms.algorithms.rloo import RLOO
from rl4lms.config import load_config
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import ComponentBuildError
from rl4lms.generation.engine import GeneratedTokens, HFGenerateEngine
from rl4lms.policies.base import ended_with_eos, weight_bytes
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.rewards.base import BatchedRewardFunction
from rl4lms.scoring.synthetic import contains_iso_date, increasing_numbers_score
from rl4lms.training.builders import build_components

TASK = REPO / "task_configs" / "synthetic_increasing_numbers"
ABS = 1e-6


def _t(*rows: list) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float64)


# --- advantage estimators -----------------------------------------------------------------------
def test_group_relative_advantages_hand_example() -> None:
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0], dtype=torch.float64)  # two groups of 2
    # group means 2 and 5: centred -1, 1, 0, 0
    assert group_relative_advantages(rewards, 2, "none").tolist() == pytest.approx([-1, 1, 0, 0], abs=ABS)
    # group std (unbiased): sqrt((1 + 1) / 1) = 1.41421356 and 0; divided by std + 1e-4:
    # 1 / 1.41431356 = 0.70705678; the flat group stays 0 (0 / 1e-4)
    assert group_relative_advantages(rewards, 2, "group").tolist() == pytest.approx(
        [-0.70705678, 0.70705678, 0, 0], abs=ABS)
    # batch std (unbiased) of 1, 3, 5, 5: mean 3.5, squares 6.25 + 0.25 + 2.25 + 2.25 = 11, / 3 -> std 1.91485422;
    # 1 / 1.91495422 = 0.52220570
    assert group_relative_advantages(rewards, 2, "batch").tolist() == pytest.approx(
        [-0.52220570, 0.52220570, 0, 0], abs=ABS)
    with pytest.raises(ValueError, match="is not one of group, batch, none"):
        group_relative_advantages(rewards, 2, "global")


def test_leave_one_out_advantages_hand_example() -> None:
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0], dtype=torch.float64)  # two groups of 3
    # group 1: baselines (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5 -> -3, -1.5, 4.5
    # group 2: baselines 1.5, 1.5, 0 -> -1.5, -1.5, 3
    assert leave_one_out_advantages(rewards, 3).tolist() == pytest.approx([-3, -1.5, 4.5, -1.5, -1.5, 3], abs=ABS)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantages(rewards, 1)


def test_discounted_returns_and_flat_groups_hand_example() -> None:
    rewards = _t([0.0, 0.0, 1.0, 7.0], [2.0, -1.0, 0.0, 0.0])
    mask = _t([1, 1, 1, 0], [1, 1, 0, 0])
    # gamma 0.5: row 1: 0.25, 0.5, 1, (padding) 0; row 2: 2 - 0.5 = 1.5, -1, 0, 0
    assert discounted_returns(rewards, mask, 0.5).flatten().tolist() == pytest.approx(
        [0.25, 0.5, 1.0, 0.0, 1.5, -1.0, 0.0, 0.0], abs=ABS)
    assert flat_groups(torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, 3.0]), 2).tolist() == [True, False, True]


def test_k3_kl_hand_example() -> None:
    # log-ratios d = 0.5 and -1: k3 = exp(-d) + d - 1 = 0.60653066 - 0.5 = 0.10653066 and e - 2 = 0.71828183
    out = token_kl(_t([-1.0, -2.0]), _t([-1.5, -1.0]), "k3")
    assert out[0].tolist() == pytest.approx([0.10653066, 0.71828183], abs=ABS)


def _estimator(cls: type, **attributes: Any) -> Any:
    """An algorithm object with only what its advantage estimator reads (one process)."""
    alg = object.__new__(cls)
    alg.accelerator = None
    for name, value in attributes.items():
        setattr(alg, name, value)
    return alg


def _data(rewards: torch.Tensor, response_mask: torch.Tensor, scores: Optional[torch.Tensor] = None) -> RolloutBatch:
    n, t = rewards.shape
    zeros = torch.zeros(n, t, dtype=torch.float64)
    return RolloutBatch(prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
                        response_ids=torch.zeros(n, t, dtype=torch.long), response_mask=response_mask.long(),
                        log_probs=zeros, ref_log_probs=zeros, values=zeros, rewards=rewards, kl=zeros,
                        scores=rewards.sum(1) if scores is None else scores)


def test_grpo_and_rloo_give_each_token_its_episode_advantage() -> None:
    # Per-token rewards (task reward + KL penalty) sum to 1, 0 (group 1) and 2, 6 (group 2).
    data = _data(_t([0.5, 0.5], [0.0, 0.0], [2.0, 0.0], [3.0, 3.0]), _t([1, 1], [1, 0], [1, 0], [1, 1]))
    grpo = _estimator(GRPO, num_generations=2, scale_rewards="none")
    # group means 0.5 and 4: 0.5, -0.5, -2, 2 on each valid token
    assert grpo.estimate_advantages(data).flatten().tolist() == pytest.approx(
        [0.5, 0.5, -0.5, 0.0, -2.0, 0.0, 2.0, 2.0], abs=ABS)
    rloo = _estimator(RLOO, num_generations=2, normalize_advantages=False)
    # leave-one-out with 2 completions: r_i - r_other: 1, -1, -4, 4
    assert rloo.estimate_advantages(data).flatten().tolist() == pytest.approx(
        [1.0, 1.0, -1.0, 0.0, -4.0, 0.0, 4.0, 4.0], abs=ABS)


def test_reinforce_plus_plus_returns_normalised_over_the_batch() -> None:
    # Rewards include the KL penalty on every token; the task reward sits on the last one.
    data = _data(_t([0.1, -0.1, 1.0], [0.0, 0.5, 0.0]), _t([1, 1, 1], [1, 1, 0]))
    alg = _estimator(ReinforcePlusPlus, num_generations=2, gamma=1.0, group_baseline=False)
    # returns: 1.0, 0.9, 1.0 and 0.5, 0.5; mean over the 5 tokens 0.78; deviations .22 .12 .22 -.28 -.28;
    # unbiased variance (.0484 + .0144 + .0484 + .0784 + .0784) / 4 = 0.067; std 0.25884358
    expected = [0.22, 0.12, 0.22, -0.28, -0.28, 0.0]
    assert alg.estimate_advantages(data).flatten().tolist() == pytest.approx([e / 0.25884358 for e in expected],
                                                                             abs=1e-5)


def test_reinforce_plus_plus_group_baseline() -> None:
    # One-token episodes, two groups of two; task rewards 1, 0 | 3, 3 (no KL).
    data = _data(_t([1.0], [0.0], [3.0], [3.0]), _t([1], [1], [1], [1]))
    plain = _estimator(ReinforcePlusPlus, num_generations=2, gamma=1.0, group_baseline=False)
    # mean 1.75, deviations -.75 -1.75 1.25 1.25, unbiased variance 6.75 / 3 = 2.25, std 1.5
    assert plain.estimate_advantages(data).flatten().tolist() == pytest.approx(
        [-0.5, -1.1666667, 0.8333333, 0.8333333], abs=1e-5)
    baseline = _estimator(ReinforcePlusPlus, num_generations=2, gamma=1.0, group_baseline=True)
    # minus the group means 0.5 and 3: 0.5, -0.5, 0, 0; mean 0, variance 0.5 / 3, std 0.40824829
    assert baseline.estimate_advantages(data).flatten().tolist() == pytest.approx(
        [1.2247449, -1.2247449, 0.0, 0.0], abs=1e-5)


# --- losses --------------------------------------------------------------------------------------
def test_loss_types_hand_example() -> None:
    per_token = _t([1.0, 2.0, 9.0], [3.0, 9.0, 9.0])
    mask = _t([1, 1, 0], [1, 0, 0])  # the 9s are padding
    # grpo: per-sequence means 1.5 and 3, then their mean 2.25
    assert aggregate_token_losses(per_token, mask, "grpo").item() == pytest.approx(2.25, abs=ABS)
    # bnpo: (1 + 2 + 3) / 3 tokens = 2
    assert aggregate_token_losses(per_token, mask, "bnpo").item() == pytest.approx(2.0, abs=ABS)
    # dr_grpo: 6 / (2 sequences x 4 max completion tokens) = 0.75
    assert aggregate_token_losses(per_token, mask, "dr_grpo", max_completion_length=4).item() == pytest.approx(0.75)
    # dapo: 6 / 3 tokens here; with 12 tokens over 2 processes (6 per process) 6 / 6 = 1
    assert aggregate_token_losses(per_token, mask, "dapo").item() == pytest.approx(2.0, abs=ABS)
    assert aggregate_token_losses(per_token, mask, "dapo", tokens_per_process=torch.tensor(6.0)).item() == 1.0
    with pytest.raises(ValueError, match="is not one of grpo, dr_grpo, dapo, bnpo"):
        aggregate_token_losses(per_token, mask, "token_mean")


def test_clipped_surrogate_with_clip_higher() -> None:
    ratio = _t([0.7, 1.3, 1.3, 0.7]).requires_grad_(True)
    advantages = _t([1.0, 1.0, -1.0, -1.0])
    loss = clipped_surrogate(ratio, advantages, epsilon_low=0.2, epsilon_high=0.28)
    # r .7 A 1: max(-.7, -.8) = -.7 (unclipped); r 1.3 A 1: max(-1.3, -1.28) = -1.28 (clipped at 1 + .28);
    # r 1.3 A -1: max(1.3, 1.28) = 1.3 (unclipped); r .7 A -1: max(.7, .8) = .8 (clipped at 1 - .2)
    assert loss[0].tolist() == pytest.approx([-0.7, -1.28, 1.3, 0.8], abs=ABS)
    loss.sum().backward()
    assert ratio.grad[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=ABS)


def test_importance_ratio_per_token_and_per_sequence() -> None:
    old = _t([-1.0, -2.0, -3.0])
    log_probs = (old + _t([0.2, 0.4, 5.0])).requires_grad_(True)  # the third token is padding
    mask = _t([1, 1, 0])
    token = importance_ratio(log_probs, old, mask, "token")
    assert token[0].tolist() == pytest.approx([math.exp(0.2), math.exp(0.4), 1.0], abs=ABS)
    sequence = importance_ratio(log_probs, old, mask, "sequence")
    # GSPO: exp(mean(0.2, 0.4)) = exp(0.3) on every position; d/dlogp_t = exp(0.3) / 2 per valid token
    assert sequence[0].tolist() == pytest.approx([math.exp(0.3)] * 3, abs=ABS)
    (sequence * mask).sum().backward()  # three copies (two valid): gradient 2 * exp(0.3) / 2 each
    assert log_probs.grad[0].tolist() == pytest.approx([math.exp(0.3), math.exp(0.3), 0.0], abs=ABS)


def test_ended_with_eos() -> None:
    eos = 9
    response = torch.tensor([[4, 9, 0], [4, 5, 6], [9, 0, 0], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert ended_with_eos(response, mask, eos).tolist() == [True, False, True, False]


# --- built algorithms ----------------------------------------------------------------------------
SAMPLES = [Sample(id=str(i), prompt_or_input_text=f"{i} {i + 1}", references=["x"]) for i in range(6)]


class EvenPromptsFlat(BatchedRewardFunction):
    """0 for every completion of a prompt whose first number is even; else the text's length."""

    def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                 dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
        return [0.0 if int(p.split()[0]) % 2 == 0 else float(len(g) + 1) for p, g in zip(prompt_texts, gen_texts)]


def make_alg(tokenizer: Any, cls: type = GRPO, reward: Optional[BatchedRewardFunction] = None, kl_coeff: float = 0.0,
             policy_args: Optional[Dict[str, Any]] = None, terminate_on_eos: bool = True,
             policy_class: type = CausalLMActorCriticPolicy, **kwargs: Any) -> Any:
    env = TextGenEnv(tokenizer, reward or EvenPromptsFlat(), SAMPLES, max_episode_length=6, max_prompt_length=8,
                     terminate_on_eos=terminate_on_eos)
    settings = dict(n_envs=2, n_steps=4, batch_size=4, num_generations=4, learning_rate=1e-3, seed=0, device="cpu")
    settings.update(kwargs)
    return cls(policy_class, env, KLController(kl_coeff), **settings,
               policy_kwargs=dict(model_name="rl4lms/tiny-gpt2", tokenizer=tokenizer, terminate_on_eos=terminate_on_eos,
                                  generation_kwargs={"do_sample": True, "top_k": 0}, **(policy_args or {})))


def _rollout(alg: Any) -> RolloutBatch:
    from stable_baselines3.common.callbacks import BaseCallback

    class Quiet(BaseCallback):
        def _on_step(self) -> bool:
            return True

    callback = Quiet()
    callback.init_callback(alg)
    assert alg.collect_rollouts(alg.env, callback, alg.rollout_buffer, alg.n_steps)
    return alg.rollout_buffer.data


def test_a_group_is_one_prompt_s_consecutive_completions_and_minibatches_keep_it(tiny_tokenizer) -> None:
    alg = make_alg(tiny_tokenizer, n_steps=20)
    data = _rollout(alg)
    prompts = data.prompt_ids.view(-1, 4, data.prompt_ids.shape[1])
    assert len(data) % 4 == 0 and len(data) >= 8
    assert (prompts == prompts[:, :1]).all()  # the 4 rows of a group share their prompt
    assert alg.rollout_buffer.n_groups == len(data) // 4
    assert data.response_mask.sum() >= 20 * 2  # n_steps * n_envs tokens
    for batch in alg.rollout_buffer.minibatches(4):  # one group per minibatch
        assert len(batch) == 4 and (batch.prompt_ids == batch.prompt_ids[:1]).all()


def test_dynamic_sampling_drops_flat_groups_and_refills(tiny_tokenizer) -> None:
    alg = make_alg(tiny_tokenizer, n_steps=60, dynamic_sampling=True, max_dynamic_sampling_rounds=2)
    data = _rollout(alg)
    first_numbers = [int(tiny_tokenizer.decode(row[mask > 0]).split()[0])
                     for row, mask in zip(data.prompt_ids, data.prompt_mask)]
    assert first_numbers and all(n % 2 == 1 for n in first_numbers)  # only the odd prompts' groups are kept
    sampling, stats = alg.sampling, alg.rollout_stats
    drawn = int(stats["rollout_info/n_episodes"]) // 4
    assert stats["dynamic_sampling/groups_dropped"] == sampling.groups_dropped == drawn - alg.rollout_buffer.n_groups
    assert sampling.groups_dropped > 0 and stats["dynamic_sampling/groups_kept"] == alg.rollout_buffer.n_groups
    assert sampling.refill_batches <= 2
    assert data.response_mask.sum() >= 60 * 2 or sampling.refill_batches == 2
    alg.train()
    assert alg.train_stats["frac_reward_zero_std"] == 0.0


def test_dynamic_sampling_keeps_the_last_batch_when_every_group_is_flat(tiny_tokenizer) -> None:
    class Zero(BatchedRewardFunction):
        def __call__(self, prompt_texts: List[str], gen_texts: List[str], *args: Any, **kwargs: Any) -> List[float]:
            return [0.0] * len(gen_texts)

    alg = make_alg(tiny_tokenizer, reward=Zero(), n_steps=1, dynamic_sampling=True, max_dynamic_sampling_rounds=3)
    data = _rollout(alg)
    # The first batch uses the budget (n_steps * n_envs = 2 tokens); 3 refills follow; all groups are flat.
    assert alg.sampling.refill_batches == 3 and alg.sampling.groups_dropped == 4 * 2
    assert len(data) == 8 and torch.equal(data.advantages, torch.zeros_like(data.advantages))


def test_truncated_completions_leave_the_loss(tiny_tokenizer) -> None:
    alg = make_alg(tiny_tokenizer, mask_truncated_completions=True)
    eos = tiny_tokenizer.eos_token_id
    batch = _data(torch.zeros(2, 3, dtype=torch.float64), _t([1, 1, 0], [1, 1, 1]))
    batch.response_ids = torch.tensor([[5, eos, 0], [5, 6, 7]])
    assert alg.loss_mask(batch).tolist() == [[1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="mask_truncated_completions needs env.args.terminate_on_eos"):
        make_alg(tiny_tokenizer, mask_truncated_completions=True, terminate_on_eos=False)


def test_grpo_with_beta_0_holds_only_the_actor_s_weights(tiny_tokenizer, tmp_path) -> None:
    alg = make_alg(tiny_tokenizer)
    policy = alg.policy
    assert policy.ref_model is None and policy.value_head is None and policy.critic_model is None
    assert not policy.has_reference
    assert weight_bytes(policy) == weight_bytes(policy.model)  # 1.0x the policy's weights
    assert [id(p) for p in policy.optimizer.param_groups[0]["params"]] == [id(p) for p in policy.model.parameters()]
    with pytest.raises(RuntimeError, match="without a reference model"):
        policy.reference_log_probs(*[torch.ones(1, 2, dtype=torch.long)] * 4)
    data = _rollout(alg)
    assert torch.equal(data.kl, torch.zeros_like(data.kl))  # no reference: no KL
    alg.train()
    policy.save_pretrained(tmp_path)
    assert not (tmp_path / "value_head.safetensors").exists() and (tmp_path / "model.safetensors").exists()

    with_kl = make_alg(tiny_tokenizer, beta=0.04)  # a KL term needs the reference: 2.0x
    assert with_kl.policy.ref_model is not None and with_kl.policy.value_head is None
    assert weight_bytes(with_kl.policy) == 2 * weight_bytes(with_kl.policy.model)
    in_reward = make_alg(tiny_tokenizer, kl_coeff=0.01)  # RL4LMs' KL in the reward needs it as well
    assert in_reward.policy.has_reference


def test_grpo_with_lora_uses_the_adapter_free_model_as_reference(tiny_tokenizer) -> None:
    pytest.importorskip("peft")
    alg = make_alg(tiny_tokenizer, beta=0.1, policy_args={"peft_config": {"r": 2, "lora_alpha": 4,
                                                                          "target_modules": ["c_attn"]}})
    policy = alg.policy
    assert policy.ref_model is None and policy.has_reference  # the reference is the model with adapters off
    base = {k: v.clone() for k, v in policy.model.state_dict().items() if "lora" not in k}
    _rollout(alg)
    alg.train()
    assert alg.train_stats["kl"] >= 0.0 and math.isfinite(alg.train_stats["grpo/loss/total"])
    after = policy.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # only the adapters moved
    assert any(v.abs().sum() > 0 for k, v in after.items() if "lora_B" in k)  # LoRA's B starts at zero


def test_grpo_on_a_maskable_policy_samples_from_the_mask_and_refreshes_it(tiny_tokenizer) -> None:
    from rl4lms.policies.maskable import MaskableCausalLMActorCriticPolicy

    alg = make_alg(tiny_tokenizer, beta=0.05, policy_class=MaskableCausalLMActorCriticPolicy,
                   policy_args={"mask_type": "learned_top_k", "top_mask": 20, "min_tokens_to_keep": 20,
                                "target_update_iterations": 2})
    assert alg.policy.value_head is None
    data = _rollout(alg)
    allowed = data.action_masks.gather(-1, data.response_ids.unsqueeze(-1)).squeeze(-1)
    assert bool(allowed[data.response_mask > 0].all())  # every sampled token was inside its step's mask
    alg.train()
    assert int(alg.policy.updates_since_mask_refresh) == 1 and math.isfinite(alg.train_stats["kl"])


@pytest.mark.parametrize("cls, loss_key", [(GRPO, "grpo/loss/total"), (RLOO, "rloo/loss/total"),
                                           (ReinforcePlusPlus, "reinforce_plus_plus/loss/total")])
@pytest.mark.parametrize("loss_type, level", [("grpo", "token"), ("dr_grpo", "token"), ("dapo", "sequence"),
                                              ("bnpo", "token")])
@pytest.mark.slow
def test_every_algorithm_and_loss_type_updates_the_policy(tiny_tokenizer, cls: type, loss_key: str, loss_type: str,
                                                          level: str) -> None:
    alg = make_alg(tiny_tokenizer, cls=cls, loss_type=loss_type, importance_sampling_level=level, num_iterations=2,
                   beta=0.02, epsilon_high=0.28)
    before = [p.detach().clone() for p in alg.policy.model.parameters()]
    _rollout(alg)
    alg.train()
    assert math.isfinite(alg.train_stats[loss_key]) and alg.train_stats["kl"] >= 0.0
    assert {"clip_ratio/low_mean", "clip_ratio/high_mean", "entropy", "reward", "frac_reward_zero_std"} <= set(
        alg.train_stats)
    assert any(not torch.equal(b, a) for b, a in zip(before, alg.policy.model.parameters()))


def test_combined_reward_weights_the_rewards(tiny_tokenizer, tmp_path) -> None:
    config = yaml.safe_load(write_small_config(tmp_path, base=TASK / "tiny_gpt2_grpo.yml").read_text())
    config["reward_fn"] = {"id": "combined", "args": {"rewards": [
        {"id": "increasing_numbers", "args": {"min_tokens": 10}, "weight": 1.0},
        {"id": "sentences_with_dates", "weight": 0.5}]}}
    path = tmp_path / "combined.yml"
    path.write_text(yaml.safe_dump(config))
    alg = build_components(load_config(path), "cpu").alg
    data = _rollout(alg)
    texts = tiny_tokenizer.batch_decode([row[mask > 0] for row, mask in zip(data.response_ids, data.response_mask)],
                                        skip_special_tokens=True)
    expected = [increasing_numbers_score(t, 10) + 0.5 * contains_iso_date(t) for t in texts]
    assert data.scores.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("alg_args, message", [
    ({"batch_size": 6}, "alg.args.batch_size (6) must be a multiple of num_generations (8)"),
    ({"num_generations": 1, "batch_size": 8}, "alg.args.num_generations must be >= 2 for grpo"),
    ({"loss_type": "seq_mean"}, "alg.args.loss_type 'seq_mean' is not one of grpo, dr_grpo, dapo, bnpo"),
    ({"scale_rewards": "std"}, "alg.args.scale_rewards 'std' is not one of group, batch, none"),
    ({"importance_sampling_level": "tok"}, "alg.args.importance_sampling_level 'tok' is not one of token, sequence"),
    ({"beta": -0.1}, "alg.args.beta must be >= 0"),
])
def test_bad_arguments_get_one_line_naming_the_key(tmp_path, alg_args: Dict[str, Any], message: str) -> None:
    config = write_small_config(tmp_path, base=TASK / "tiny_gpt2_grpo.yml", alg_args=alg_args)
    with pytest.raises(ComponentBuildError) as error:
        build_components(load_config(config), "cpu")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_reinforce_plus_plus_needs_groups_only_for_its_group_baseline(tmp_path) -> None:
    config = write_small_config(tmp_path, base=TASK / "tiny_gpt2_reinforce_plus_plus.yml",
                                alg_args={"num_generations": 1, "group_baseline": False})
    assert build_components(load_config(config), "cpu").alg.num_generations == 1
    config = write_small_config(tmp_path, base=TASK / "tiny_gpt2_reinforce_plus_plus.yml",
                                alg_args={"num_generations": 1, "group_baseline": True})
    with pytest.raises(ComponentBuildError, match="group_baseline compares the completions of one prompt"):
        build_components(load_config(config), "cpu")


# --- an engine without logits (vLLM's case): the update computes the old log-probs ------------------
class LogitFreeEngine(HFGenerateEngine):
    """``generate`` that returns what a separate engine returns: the tokens and its own log-probs of
    them (here from the same model's logits), no logits for the trainer."""

    importance_sampling_cap = 2.0

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: Any, logits: bool = False,
                 hidden: bool = False, logits_processor: Any = None) -> GeneratedTokens:
        out = super().generate(prompt_ids, prompt_mask, config, logits=True, logits_processor=logits_processor)
        log_probs = torch.log_softmax(out.step_logits.float(), -1).gather(-1, out.response_ids[..., None])[..., 0]
        return GeneratedTokens(out.response_ids, sampled_log_probs=log_probs)


def _train_once(tokenizer: Any, logit_free: bool, defer: bool = True, **kwargs: Any) -> Any:
    alg = make_alg(tokenizer, n_steps=8, **kwargs)
    if logit_free:
        alg.policy.engine = LogitFreeEngine(alg.policy)
    alg.collector.defer_log_probs = defer
    forwards = []
    evaluate = alg.policy.evaluate_episodes
    alg.policy.evaluate_episodes = lambda *args: forwards.append(len(args[0])) or evaluate(*args)
    alg.rollout_log_probs = _rollout(alg).log_probs
    alg.forwards_in_rollout = list(forwards)
    alg.train()
    alg.forwards = forwards
    return alg


@pytest.mark.parametrize("batch_size", [16, 4])
def test_rollout_without_logits_leaves_the_old_log_probs_to_the_update(tiny_tokenizer, batch_size: int) -> None:
    baseline = _train_once(tiny_tokenizer, logit_free=False, batch_size=batch_size)
    deferred = _train_once(tiny_tokenizer, logit_free=True, batch_size=batch_size)
    data = deferred.rollout_buffer.data
    n_minibatches = math.ceil(len(data) / batch_size)
    assert len(data) == len(baseline.rollout_buffer.data) and deferred.forwards_in_rollout == []
    # One optimizer step: the update's forward is the only one. Several: one forward before them.
    assert len(deferred.forwards) == (n_minibatches if n_minibatches == 1 else 2 * n_minibatches)
    assert torch.allclose(data.log_probs, baseline.rollout_buffer.data.log_probs, atol=1e-5)
    assert torch.allclose(data.ref_log_probs, data.log_probs)
    assert torch.allclose(data.importance_weights, torch.ones_like(data.log_probs), atol=1e-4)
    # The same gradient; Adam's first step (about lr = 1e-3 per weight) leaves float noise only.
    assert deferred.train_stats["grpo/grad_norm"] == pytest.approx(baseline.train_stats["grpo/grad_norm"], rel=1e-5)
    for ours, theirs in zip(deferred.policy.model.parameters(), baseline.policy.model.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-4)
    assert deferred.train_stats["grpo/loss/total"] == pytest.approx(baseline.train_stats["grpo/loss/total"], abs=1e-5)
    assert deferred.train_stats["objective/logprobs"] == pytest.approx(
        baseline.train_stats["objective/logprobs"], abs=1e-5)
    assert deferred.rollout_stats["rollout_info/engine_logprob_abs_diff_max"] < 1e-4
    assert deferred.rollout_stats["rollout_info/engine_is_weight_mean"] == pytest.approx(1.0, abs=1e-4)


def test_a_reference_model_keeps_the_rollout_forward(tiny_tokenizer) -> None:
    alg = _train_once(tiny_tokenizer, logit_free=True, beta=0.04)
    assert alg.forwards_in_rollout and alg.rollout_stats["rollout_info/engine_logprob_abs_diff_max"] < 1e-4


def test_a_surely_one_step_update_does_not_ask_generate_for_logits(tiny_tokenizer) -> None:
    # Without EOS stopping every completion has 6 tokens: one generation batch of 2 x 4 completions
    # holds the rollout's 8 x 2 tokens, and batch_size 8 makes the update one optimizer step.
    settings = dict(terminate_on_eos=False, batch_size=8)
    baseline = _train_once(tiny_tokenizer, logit_free=False, defer=False, **settings)
    deferred = _train_once(tiny_tokenizer, logit_free=False, **settings)
    assert deferred.update_is_one_step()
    assert deferred.rollout_log_probs is None and baseline.rollout_log_probs is not None
    assert deferred.forwards_in_rollout == [] and len(deferred.forwards) == 1
    assert torch.allclose(deferred.rollout_buffer.data.log_probs, baseline.rollout_log_probs, atol=1e-5)
    assert deferred.train_stats["grpo/grad_norm"] == pytest.approx(baseline.train_stats["grpo/grad_norm"], rel=1e-5)
    assert not [name for name in deferred.rollout_stats if "engine" in name]
    fresh = make_alg(tiny_tokenizer, n_steps=8, **settings)
    _rollout(fresh)
    with pytest.raises(RuntimeError, match="computed by the update's forward"):
        fresh.rollout_buffer.log_probs  # SB3's per-token view before train()
    # EOS stopping could end every completion after one token: the budget may need more batches.
    assert not make_alg(tiny_tokenizer, n_steps=8, batch_size=8).update_is_one_step()
    assert not make_alg(tiny_tokenizer, n_steps=8, batch_size=4, terminate_on_eos=False).update_is_one_step()
