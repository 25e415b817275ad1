"""Natural Language Policy Optimization (RL4LMs' ``nlpo``): PPO over a masked action space."""
from __future__ import annotations

from rl4lms.algorithms.ppo import PPO
from rl4lms.policies.maskable import MaskablePolicyMixin
from rl4lms.registry import PolicyRegistry


class NLPO(PPO):
    """PPO whose policy samples from the mask model's top-k/top-p tokens.

    Rollouts store each step's action mask and the ratio uses the masked log-probs; the KL
    penalty uses the unmasked ones. After every update the policy counts towards its next
    mask-model refresh (``policy.args.target_update_iterations``).
    """

    def _setup_model(self) -> None:
        if not issubclass(self.policy_class, MaskablePolicyMixin):
            maskable = [i for i in PolicyRegistry.ids() if issubclass(PolicyRegistry.get(i), MaskablePolicyMixin)]
            raise ValueError(f"alg 'nlpo' needs a maskable policy; alg.policy.id must be one of {', '.join(maskable)}")
        super()._setup_model()

    def train(self) -> None:
        super().train()
        self.policy.after_update()
        self.train_stats["nlpo/updates_since_mask_refresh"] = float(self.policy.updates_since_mask_refresh)
