"""REINFORCE Leave-One-Out (Ahmadian et al. 2024; TRL's ``RLOOTrainer``)."""
from __future__ import annotations

from typing import Any

import torch

from rl4lms.algorithms.advantages import leave_one_out_advantages, whiten
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.critic_free import SHARED_ARGS, CriticFreeAlgorithm, per_token


class RLOO(CriticFreeAlgorithm):
    __doc__ = """Each completion's advantage is its reward minus the mean reward of the other completions of
    its prompt; no critic.

    The reward of a completion is its task reward plus the summed KL penalty of ``alg.kl_div`` (TRL's
    RLOO puts its ``beta`` there; here ``alg.args.beta`` is the KL term in the loss, as for GRPO).
    TRL's RLOO takes one ratio per sequence (``exp`` of the summed token log-ratios) and averages over
    sequences; here the ratio and the averaging follow ``importance_sampling_level`` and ``loss_type``.

    Args (``alg.args``; ``num_generations`` defaults to 2, ``loss_type`` to "dapo"):
        normalize_advantages: whiten the advantages over the rollout of all processes (TRL's option).
""" + SHARED_ARGS

    short_name = "rloo"

    def __init__(self, *args: Any, num_generations: int = 2, normalize_advantages: bool = False,
                 **kwargs: Any) -> None:
        self.normalize_advantages = normalize_advantages
        super().__init__(*args, num_generations=num_generations, **kwargs)

    def estimate_advantages(self, data: RolloutBatch) -> torch.Tensor:
        def estimate(rewards: torch.Tensor) -> torch.Tensor:
            advantages = leave_one_out_advantages(rewards, self.num_generations)
            return whiten(advantages, torch.ones_like(advantages)) if self.normalize_advantages else advantages

        return per_token(self.on_global_batch(estimate, data.rewards.sum(1)), data)
