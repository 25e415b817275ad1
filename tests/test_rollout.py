"""Batched rollouts: episode ends, reward placement, per-step reward replay, token budget, NaN guard."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.ppo import PPO
from rl4lms.data_pools.text_gen_pool import Sample
from rl4lms.envs.observation import Observation
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.errors import NonFiniteLossError, RewardOutputError
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.rewards.base import BatchedRewardFunction, RewardFunction, ScoreReward

SAMPLES = [Sample(id=str(i), prompt_or_input_text=" ".join(str(i + k) for k in range(1 + i % 3))) for i in range(6)]


class LengthReward(BatchedRewardFunction):
    """Episode reward = number of characters generated (easy to check by hand)."""

    def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                 dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
        return [float(len(text)) for text in gen_texts]


class StepReward(RewardFunction):
    """Per-step reward: 1 for every token, 10 at the end."""

    def __call__(self, prev_observation: Observation, action: int, current_observation: Observation,
                 done: bool, meta_info: Optional[Dict[str, Any]] = None) -> float:
        return 10.0 if done else 1.0


def make_ppo(tokenizer, reward, terminate_on_eos: bool = True, max_prompt_length: int = 8, **kwargs) -> PPO:
    env = TextGenEnv(tokenizer, reward, SAMPLES, max_episode_length=6, max_prompt_length=max_prompt_length,
                     terminate_on_eos=terminate_on_eos)
    settings = dict(n_envs=4, n_steps=6, batch_size=4, n_epochs=1, learning_rate=1e-3, seed=0, device="cpu")
    settings.update(kwargs)
    return PPO(CausalLMActorCriticPolicy, env, KLController(0.1), **settings,
               policy_kwargs=dict(model_name="rl4lms/tiny-gpt2", tokenizer=tokenizer, terminate_on_eos=terminate_on_eos,
                                  generation_kwargs={"do_sample": True, "top_k": 0}))


def eos_likely(policy: CausalLMActorCriticPolicy, eos_id: int) -> None:
    def hook(module, inputs, output):
        output[..., eos_id] += 6.0
        return output
    policy.model.lm_head.register_forward_hook(hook)


def test_batched_reward_sits_on_the_last_token(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, LengthReward())
    eos_likely(alg.policy, tiny_tokenizer.eos_token_id)
    torch.manual_seed(0)
    batch, _ = alg.collector.collect(SAMPLES[:4], kl_coeff=0.0)
    lengths = batch.response_mask.sum(1)
    assert (lengths < 6).any(), "the EOS bias should end some episodes early"
    for row in range(4):
        n = int(lengths[row])
        tokens = batch.response_ids[row, :n].tolist()
        text = tiny_tokenizer.decode(tokens, skip_special_tokens=True)
        expected = torch.zeros(batch.rewards.shape[1])
        expected[n - 1] = len(text)
        assert torch.allclose(batch.rewards[row], expected)  # kl_coeff 0: task reward only
        assert batch.scores[row].item() == len(text)
        if n < 6:
            assert tokens[-1] == tiny_tokenizer.eos_token_id
            assert (batch.response_ids[row, n:] == tiny_tokenizer.pad_token_id).all()


def test_without_terminate_on_eos_episodes_run_full_length(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, LengthReward(), terminate_on_eos=False)
    eos_likely(alg.policy, tiny_tokenizer.eos_token_id)
    torch.manual_seed(0)
    batch, _ = alg.collector.collect(SAMPLES[:4], kl_coeff=0.0)
    assert batch.response_mask.sum(1).tolist() == [6, 6, 6, 6]
    assert (batch.response_ids == tiny_tokenizer.eos_token_id).any()


def test_per_step_reward_is_replayed_through_the_env(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, StepReward())
    eos_likely(alg.policy, tiny_tokenizer.eos_token_id)
    torch.manual_seed(1)
    batch, _ = alg.collector.collect(SAMPLES[:4], kl_coeff=0.0)
    for row, n in enumerate(batch.response_mask.sum(1).tolist()):
        expected = [1.0] * (n - 1) + [10.0] + [0.0] * (batch.rewards.shape[1] - n)
        assert batch.rewards[row].tolist() == expected


def test_kl_penalty_uses_the_current_coefficient(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, LengthReward())
    torch.manual_seed(0)
    batch, _ = alg.collector.collect(SAMPLES[:4], kl_coeff=0.5)
    mask = batch.response_mask.float()
    task = batch.rewards + 0.5 * (batch.log_probs - batch.ref_log_probs) * mask
    assert torch.allclose(task.sum(1), batch.scores, atol=1e-5)
    assert torch.allclose(batch.kl, torch.zeros_like(batch.kl), atol=1e-6)  # policy == reference before training


def test_rollout_collects_the_token_budget_and_counts_truncation(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, LengthReward(), max_prompt_length=1)
    alg.run_iteration()
    assert alg.num_timesteps >= 6 * 4
    assert alg.rollout_buffer.data is not None
    assert int(alg.rollout_buffer.data.response_mask.sum()) == alg.num_timesteps
    assert alg.rollout_stats["rollout_info/prompts_truncated"] > 0
    assert alg.rollout_buffer.data.prompt_ids.shape[1] == 1



def test_learn_runs_iterations_until_its_token_budget_as_sb3_does(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, LengthReward())
    alg.run_iteration()
    start, budget = alg.num_timesteps, 3 * alg.tokens_per_rollout
    counts_before = []
    run_iteration = alg.run_iteration

    def counted_iteration() -> None:
        counts_before.append(alg.num_timesteps)
        run_iteration()

    alg.run_iteration = counted_iteration
    alg.learn(total_timesteps=budget, reset_num_timesteps=False)
    assert alg.num_timesteps - start >= budget
    assert counts_before[-1] - start < budget  # no iteration more than the budget needs
    assert alg.iterations_done == 1 + len(counts_before)

@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error(tiny_tokenizer) -> None:
    alg = make_ppo(tiny_tokenizer, LengthReward())
    with torch.no_grad():
        alg.policy.value_head.summary.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="ppo/loss/total"):
        alg.run_iteration()


@pytest.mark.parametrize("scores, message", [
    (lambda n: [float("nan")] * n, r"returned a non-finite reward for sample ids \['0', '1', '2', '3'\]"),
    (lambda n: [1.0] * (n - 1), "returned 3 scores for 4 generations"),
    (lambda n: ["good"] * n, r"returned 'good' \(str\) where a number was expected"),
    (lambda n: [None] * n, r"returned None \(NoneType\) where a number was expected"),
    (lambda n: [[1.0, 2.0]] * n, r"returned \[1.0, 2.0\] \(list\) where a number was expected"),
    (lambda n: 0.5, r"returned 0.5 \(float\) where a list of 4 numbers was expected"),
    (lambda n: "1111", r"returned '1111' \(str\) where a list of 4 numbers was expected"),
])
@pytest.mark.slow
def test_bad_reward_output_names_the_reward_function(tiny_tokenizer, scores, message: str) -> None:
    class BadReward(LengthReward):
        def __call__(self, *args: Any, **kwargs: Any) -> List[float]:
            return scores(len(args[1]))

    alg = make_ppo(tiny_tokenizer, BadReward())
    with pytest.raises(RewardOutputError, match="reward function BadReward " + message):
        alg.collector.collect(SAMPLES[:4], kl_coeff=0.1)


def test_numeric_reward_outputs_of_any_kind_are_accepted(tiny_tokenizer) -> None:
    class NumpyReward(LengthReward):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return np.array([1, 2.5, np.float32(3.0), 4])

    rewards = make_ppo(tiny_tokenizer, NumpyReward()).collector.collect(SAMPLES[:4], kl_coeff=0.1)[0].scores
    assert rewards.tolist() == [1.0, 2.5, 3.0, 4.0]


@pytest.mark.parametrize("value", ["high", None, [0.1]])
def test_per_step_reward_returning_a_non_number_names_the_reward_function(tiny_tokenizer, value: Any) -> None:
    class BadStepReward(RewardFunction):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return value

    alg = make_ppo(tiny_tokenizer, BadStepReward())
    with pytest.raises(RewardOutputError, match=f"reward function BadStepReward returned {re.escape(repr(value))} "):
        alg.collector.collect(SAMPLES[:4], kl_coeff=0.1)


def test_score_reward_subclass_returning_non_numbers_names_its_class(tiny_tokenizer) -> None:
    class TextScores(ScoreReward):
        def scores(self, prompt_texts: List[str], *args: Any) -> List[Any]:
            return ["n/a"] * len(prompt_texts)

    with pytest.raises(RewardOutputError, match="reward function TextScores returned 'n/a'"):
        TextScores()(["a", "b"], ["x", "y"], [["r"], ["r"]], [True, True])


@pytest.mark.slow
def test_separate_critic_trains_its_own_backbone(tiny_tokenizer) -> None:
    env = TextGenEnv(tiny_tokenizer, LengthReward(), SAMPLES, max_episode_length=6, max_prompt_length=8)
    alg = PPO(CausalLMActorCriticPolicy, env, KLController(0.1), n_envs=4, n_steps=6, batch_size=4, n_epochs=1,
              learning_rate=1e-3, seed=0, device="cpu",
              policy_kwargs=dict(model_name="rl4lms/tiny-gpt2", tokenizer=tiny_tokenizer, shared_backbone=False,
                                 generation_kwargs={"do_sample": True}))
    critic = alg.policy.critic_model
    assert critic is not None and critic is not alg.policy.model
    before = {name: p.detach().clone() for name, p in critic.named_parameters()}
    actor_before = alg.policy.model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    alg.run_iteration()
    changed = [name for name, p in critic.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("transformer.h.") for name in changed)
    assert not torch.equal(alg.policy.model.transformer.h[0].mlp.c_fc.weight, actor_before)
    assert "ppo/val/var_explained" in alg.train_stats


@pytest.mark.slow
def test_sb3_predict_on_env_observations_for_both_model_kinds(tiny_tokenizer) -> None:
    from rl4lms.policies.seq2seq import Seq2SeqLMActorCriticPolicy

    for policy_cls, model, start in ((CausalLMActorCriticPolicy, "rl4lms/tiny-gpt2", None),
                                     (Seq2SeqLMActorCriticPolicy, "rl4lms/tiny-t5", tiny_tokenizer.pad_token_id)):
        env = TextGenEnv(tiny_tokenizer, StepReward(), SAMPLES, max_episode_length=3, max_prompt_length=8,
                         context_start_token=start)
        policy = policy_cls(env.observation_space, env.action_space, lambda _: 1e-3, model, tiny_tokenizer)
        obs, _ = env.reset(seed=0)
        done, steps = False, 0
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            obs, _, done, _, _ = env.step(int(action))
            steps += 1
        assert steps == 3 and env.observation is not None
        # Token-by-token prediction on observations matches batched greedy generation.
        prompt = torch.tensor([env.encode_prompt(env.observation.prompt_or_input_text)])
        greedy = policy.generation_config({"do_sample": False}, max_new_tokens=3)
        response, _ = policy.generate(prompt, torch.ones_like(prompt), greedy)
        assert env.observation.action_history == response[0].tolist()


@pytest.mark.slow
def test_sb3_logger_writes_no_folders(tiny_tokenizer, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    alg = make_ppo(tiny_tokenizer, LengthReward())
    alg.run_iteration()
    assert list(tmp_path.iterdir()) == []
