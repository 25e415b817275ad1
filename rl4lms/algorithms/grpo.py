"""Group Relative Policy Optimization (DeepSeekMath's GRPO, with TRL's loss options)."""
from __future__ import annotations

from typing import Any

import torch

from rl4lms.algorithms.advantages import SCALE_REWARDS, group_relative_advantages
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.critic_free import SHARED_ARGS, CriticFreeAlgorithm, per_token


class GRPO(CriticFreeAlgorithm):
    __doc__ = """Each completion's advantage is its reward minus the mean reward of its prompt's group,
    divided by the group's (or the batch's) standard deviation; no critic.

    The reward of a completion is its task reward plus the summed KL penalty of ``alg.kl_div`` (if
    any). Variants by argument: Dr. GRPO (``scale_rewards: none``, ``loss_type: dr_grpo``), DAPO
    (``loss_type: dapo``, ``epsilon_high: 0.28``, ``dynamic_sampling: true``,
    ``mask_truncated_completions: true``), GSPO (``importance_sampling_level: sequence``).

    Args (``alg.args``; ``num_generations`` defaults to 8, ``loss_type`` to "dapo"):
        scale_rewards: "group" (divide by the group's standard deviation), "batch" (by the whole
            rollout's, over all processes) or "none".
""" + SHARED_ARGS

    short_name = "grpo"

    def __init__(self, *args: Any, scale_rewards: str = "group", **kwargs: Any) -> None:
        if scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"alg.args.scale_rewards {scale_rewards!r} is not one of {', '.join(SCALE_REWARDS)}")
        self.scale_rewards = scale_rewards
        super().__init__(*args, **kwargs)

    def estimate_advantages(self, data: RolloutBatch) -> torch.Tensor:
        def estimate(rewards: torch.Tensor) -> torch.Tensor:
            return group_relative_advantages(rewards, self.num_generations, self.scale_rewards)

        return per_token(self.on_global_batch(estimate, data.rewards.sum(1)), data)
