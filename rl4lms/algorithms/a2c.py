"""Advantage Actor-Critic on token-level rewards (RL4LMs' ``a2c``)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

from rl4lms.algorithms.advantages import masked_mean
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.base import LMActorCriticPolicy


class A2C(LMOnPolicyAlgorithm):
    """One gradient step per rollout on ``-A * log pi + vf_coef * (V - R)^2 - ent_coef * H``.

    Like stable-baselines3's A2C there are no epochs, minibatches or ratio clipping; advantage
    normalisation is off by default.
    """

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
                 n_envs: int = 1, learning_rate: float = 7e-4, n_steps: int = 5, gamma: float = 0.99,
                 gae_lambda: float = 1.0, ent_coef: float = 0.0, vf_coef: float = 0.5, max_grad_norm: float = 0.5,
                 normalize_advantage: bool = False, lr_scheduler_type: str = "constant",
                 policy_kwargs: Optional[Dict[str, Any]] = None, verbose: int = 0,
                 seed: Optional[int] = None, device: str = "auto", _init_setup_model: bool = True) -> None:
        super().__init__(policy=policy, env=env, kl_controller=kl_controller, n_envs=n_envs,
                         learning_rate=learning_rate, n_steps=n_steps, gamma=gamma, gae_lambda=gae_lambda,
                         ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                         normalize_advantage=normalize_advantage, lr_scheduler_type=lr_scheduler_type,
                         policy_kwargs=policy_kwargs, verbose=verbose,
                         seed=seed, device=device, _init_setup_model=_init_setup_model)

    def train(self) -> None:
        """A single update on the whole rollout."""
        self._update_learning_rate(self.policy.optimizer)
        data = self.rollout_buffer.data
        assert data is not None and data.advantages is not None and data.returns is not None
        out = self.batch_outputs(data)
        mask = data.token_mask()
        policy_loss = -masked_mean(data.advantages * out.log_probs, mask)
        value_loss = masked_mean((out.values - data.returns) ** 2, mask)
        entropy = masked_mean(out.entropy, mask)
        total = policy_loss + self.vf_coef * value_loss - self.ent_coef * entropy
        grad_norm = self.optimization_step(total, "a2c/loss/total")
        self._n_updates += 1
        self.train_stats = {
            "a2c/loss/policy": policy_loss.item(), "a2c/loss/value": value_loss.item(),
            "a2c/loss/total": total.item(), "a2c/policy/entropy": entropy.item(), "a2c/grad_norm": grad_norm,
            "a2c/learning_rate": self.current_learning_rate(),
        }
        self.train_stats.update(self.value_stats())
        self.train_stats.update(self.objective_stats())
