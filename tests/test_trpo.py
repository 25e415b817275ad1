"""TRPO: conjugate gradient, and the natural step keeps the KL within the trust region."""
from __future__ import annotations

import copy

import torch

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.trpo import TRPO, conjugate_gradient, token_kl
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.causal import CausalLMActorCriticPolicy
from rl4lms.rewards.synthetic import IncreasingNumbersReward

from test_rollout import SAMPLES


def test_conjugate_gradient_solves_a_symmetric_positive_definite_system() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    matrix = basis @ basis.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=generator, dtype=torch.float64)
    x = conjugate_gradient(lambda v: matrix @ v, b, max_steps=6)
    torch.testing.assert_close(matrix @ x, b)


def test_token_kl_is_zero_for_equal_and_positive_for_different_distributions() -> None:
    old = torch.log_softmax(torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]), -1)
    new = torch.log_softmax(torch.tensor([[[3.0, 2.0, 1.0], [5.0, 0.0, 0.0]]]), -1)
    mask = torch.tensor([[1.0, 0.0]])
    assert float(token_kl(old, old, mask)) == 0.0
    expected = float((old[0, 0].exp() * (old[0, 0] - new[0, 0])).sum())
    assert abs(float(token_kl(old, new, mask)) - expected) < 1e-6


def test_natural_step_stays_within_the_kl_constraint(tiny_tokenizer) -> None:
    env = TextGenEnv(tiny_tokenizer, IncreasingNumbersReward(min_tokens=2), SAMPLES, max_episode_length=6,
                     max_prompt_length=8, terminate_on_eos=True)
    target_kl = 0.02
    alg = TRPO(CausalLMActorCriticPolicy, env, KLController(0.0), n_envs=6, n_steps=6, batch_size=6, target_kl=target_kl,
               n_critic_updates=1, seed=0, device="cpu",
               policy_kwargs=dict(model_name="rl4lms/tiny-gpt2", tokenizer=tiny_tokenizer, terminate_on_eos=True,
                                  generation_kwargs={"do_sample": True, "top_k": 0}))
    before = copy.deepcopy(alg.policy.model)
    torch.manual_seed(0)
    alg.run_iteration()
    stats = alg.train_stats
    assert stats["trpo/line_search_success"] == 1.0
    assert stats["trpo/surrogate_improvement"] > 0

    # Recompute the KL between the old and new policy on the rollout, independently of TRPO's own number.
    data = alg.rollout_buffer.data
    with torch.no_grad():
        new_logits = alg.policy.response_logits(data.prompt_ids, data.prompt_mask, data.response_ids,
                                                data.response_mask)
        alg.policy.model, current = before, alg.policy.model
        old_logits = alg.policy.response_logits(data.prompt_ids, data.prompt_mask, data.response_ids,
                                                data.response_mask)
        alg.policy.model = current
    kl = float(token_kl(torch.log_softmax(old_logits, -1), torch.log_softmax(new_logits, -1),
                        data.response_mask.float()))
    assert 0 < kl <= target_kl
    assert abs(kl - stats["trpo/kl"]) < 1e-4
