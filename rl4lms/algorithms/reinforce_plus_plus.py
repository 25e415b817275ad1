"""REINFORCE++ (Hu et al. 2025; OpenRLHF's ``reinforce`` and ``reinforce_baseline`` estimators)."""
from __future__ import annotations

from typing import Any

import torch

from rl4lms.algorithms.advantages import discounted_returns, group_relative_advantages, whiten
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.critic_free import SHARED_ARGS, CriticFreeAlgorithm


class ReinforcePlusPlus(CriticFreeAlgorithm):
    __doc__ = """Per-token returns of the KL-penalised rewards, without a critic, normalised over the global
    batch (every valid token of the rollout of all processes), then PPO's clipped surrogate.

    The per-token rewards are RL4LMs': ``-kl_div.coeff * (log pi - log pi_ref)`` on every token plus
    the task reward on the last one, so the KL usually goes in the reward (``alg.kl_div``, OpenRLHF's
    default) rather than in the loss (``beta``). With ``group_baseline`` each task reward first loses
    the mean task reward of its prompt's group (REINFORCE++-baseline).

    Args (``alg.args``; ``num_generations`` defaults to 1, ``loss_type`` to "dapo"):
        gamma: the returns' discount (1: every token's return is the rest of the episode's reward).
        group_baseline: subtract the group's mean task reward (needs ``num_generations >= 2``).
""" + SHARED_ARGS

    short_name = "reinforce_plus_plus"
    min_generations = 1

    def __init__(self, *args: Any, num_generations: int = 1, gamma: float = 1.0, group_baseline: bool = False,
                 **kwargs: Any) -> None:
        if group_baseline and num_generations < 2:
            raise ValueError("alg.args.group_baseline compares the completions of one prompt: it needs "
                             f"num_generations >= 2, got {num_generations}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"alg.args.gamma must be in [0, 1], got {gamma}")
        self.group_baseline = group_baseline
        super().__init__(*args, num_generations=num_generations, **kwargs)
        self.gamma = gamma  # after SB3's constructor, which sets its own

    def estimate_advantages(self, data: RolloutBatch) -> torch.Tensor:
        mask = data.token_mask()
        rewards = data.rewards
        if self.group_baseline:
            group_means = data.scores - group_relative_advantages(data.scores, self.num_generations, "none")
            last = (data.response_mask.sum(1) - 1).clamp(min=0)
            rewards = rewards.clone()
            rewards[torch.arange(len(rewards), device=rewards.device), last] -= group_means
        returns = discounted_returns(rewards, mask, self.gamma)
        return self.on_global_batch(whiten, returns, mask)
