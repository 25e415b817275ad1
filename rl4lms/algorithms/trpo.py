"""Trust Region Policy Optimization on token-level rewards (RL4LMs' ``trpo``).

The actor takes one natural-gradient step per rollout: conjugate gradient solves ``F x = g``
with Fisher-vector products of the token-level KL, the step is scaled to the KL radius
``target_kl`` and a backtracking line search keeps the KL within it while improving the
surrogate. The critic is fitted by regression on the returns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Type

import torch

from rl4lms.algorithms.advantages import masked_mean
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.base import LMActorCriticPolicy, apply_action_masks


def conjugate_gradient(matrix_vector: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, max_steps: int,
                       tolerance: float = 1e-10) -> torch.Tensor:
    """Approximate ``A^-1 b`` for a symmetric positive-definite ``A`` given as ``v -> A v``."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_norm = residual @ residual
    for _ in range(max_steps):
        a_direction = matrix_vector(direction)
        alpha = residual_norm / (direction @ a_direction).clamp(min=1e-12)
        x += alpha * direction
        residual -= alpha * a_direction
        new_norm = residual @ residual
        if new_norm < tolerance:
            break
        direction = residual + (new_norm / residual_norm) * direction
        residual_norm = new_norm
    return x


def token_kl(old_log_dist: torch.Tensor, new_log_dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of ``KL(old || new)`` between full next-token distributions."""
    per_token = (old_log_dist.exp() * (old_log_dist - new_log_dist)).sum(-1)
    return masked_mean(per_token, mask)


@dataclass
class ActorStepResult:
    """What the natural-gradient step did."""

    kl: float
    surrogate_before: float
    surrogate_after: float
    step_fraction: float
    accepted: bool


def _flat(tensors: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class TRPO(LMOnPolicyAlgorithm):
    """Natural-gradient actor step under a KL trust region; value by regression.

    Arguments follow sb3-contrib's TRPO: ``learning_rate`` is the critic's, ``target_kl`` the
    trust-region radius, ``n_critic_updates`` passes of ``batch_size`` minibatches fit the values.
    """

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
                 n_envs: int = 1, learning_rate: float = 1e-3, n_steps: int = 128, batch_size: int = 64,
                 gamma: float = 0.99, gae_lambda: float = 0.95, cg_max_steps: int = 15, cg_damping: float = 0.1,
                 line_search_shrinking_factor: float = 0.8, line_search_max_iter: int = 10,
                 n_critic_updates: int = 10, target_kl: float = 0.01, normalize_advantage: bool = True,
                 lr_scheduler_type: str = "constant",
                 max_grad_norm: float = 0.5, policy_kwargs: Optional[Dict[str, Any]] = None, verbose: int = 0,
                 seed: Optional[int] = None, device: str = "auto", _init_setup_model: bool = True) -> None:
        if not target_kl > 0:
            raise ValueError(f"alg.args.target_kl must be > 0 for trpo, got {target_kl}")
        if not 0 < line_search_shrinking_factor < 1:
            raise ValueError(f"alg.args.line_search_shrinking_factor must be in (0, 1), got {line_search_shrinking_factor}")
        if min(batch_size, cg_max_steps, line_search_max_iter, n_critic_updates) < 1:
            raise ValueError("alg.args.batch_size, cg_max_steps, line_search_max_iter and n_critic_updates must be >= 1")
        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.line_search_shrinking_factor = line_search_shrinking_factor
        self.line_search_max_iter = line_search_max_iter
        self.n_critic_updates = n_critic_updates
        self.target_kl = target_kl
        super().__init__(policy=policy, env=env, kl_controller=kl_controller, n_envs=n_envs,
                         learning_rate=learning_rate, n_steps=n_steps, gamma=gamma, gae_lambda=gae_lambda,
                         ent_coef=0.0, vf_coef=1.0, max_grad_norm=max_grad_norm,
                         normalize_advantage=normalize_advantage, lr_scheduler_type=lr_scheduler_type,
                         policy_kwargs=policy_kwargs, verbose=verbose,
                         seed=seed, device=device, _init_setup_model=_init_setup_model)

    supports_multiprocess = False  # the Fisher-vector products use autograd.grad, which DDP does not synchronise

    def _setup_model(self) -> None:
        super()._setup_model()
        # Fisher-vector products differentiate twice; fused attention kernels (SDPA on CPU)
        # have no double backward, the eager implementation does.
        self.policy.model.set_attn_implementation("eager")

    def _log_dist(self, batch: RolloutBatch) -> torch.Tensor:
        logits = self.policy.response_logits(batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                             batch.response_mask)
        return torch.log_softmax(apply_action_masks(logits, batch.action_masks, batch.response_mask).float(), dim=-1)

    def _surrogate(self, log_dist: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
        assert batch.advantages is not None
        mask = batch.token_mask()
        log_probs = log_dist.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp((log_probs - batch.log_probs) * mask)
        return masked_mean(ratio * batch.advantages, mask)

    def actor_step(self, batch: RolloutBatch) -> ActorStepResult:
        """One natural-gradient step of the actor on ``batch`` with a KL-constrained line search."""
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        mask = batch.token_mask()
        log_dist = self._log_dist(batch)
        surrogate = self._surrogate(log_dist, batch)
        self.check_finite(surrogate, "trpo/surrogate")
        old_log_dist = log_dist.detach()
        gradient = _flat(torch.autograd.grad(surrogate, params, retain_graph=True))
        kl_gradient = _flat(torch.autograd.grad(token_kl(old_log_dist, log_dist, mask), params, create_graph=True))

        def fisher_vector(vector: torch.Tensor) -> torch.Tensor:
            product = _flat(torch.autograd.grad(kl_gradient @ vector, params, retain_graph=True))
            return product + self.cg_damping * vector

        direction = conjugate_gradient(fisher_vector, gradient, self.cg_max_steps)
        curvature = float(direction @ fisher_vector(direction))
        full_step = direction * math.sqrt(2 * self.target_kl / max(curvature, 1e-12))
        start = [p.detach().clone() for p in params]
        before = float(surrogate.detach())
        fraction = 1.0
        with torch.no_grad():
            for _ in range(self.line_search_max_iter):
                self._set_params(params, start, full_step * fraction)
                new_log_dist = self._log_dist(batch)
                kl = float(token_kl(old_log_dist, new_log_dist, mask))
                after = float(self._surrogate(new_log_dist, batch))
                if kl <= self.target_kl and after > before:
                    return ActorStepResult(kl, before, after, fraction, True)
                fraction *= self.line_search_shrinking_factor
            self._set_params(params, start, torch.zeros_like(full_step))
        return ActorStepResult(0.0, before, before, 0.0, False)

    @staticmethod
    def _set_params(params: List[torch.Tensor], start: List[torch.Tensor], step: torch.Tensor) -> None:
        offset = 0
        for param, origin in zip(params, start):
            size = param.numel()
            param.copy_(origin + step[offset:offset + size].view_as(param))
            offset += size

    def train(self) -> None:
        """Actor: one natural-gradient step on the whole rollout; critic: regression on the returns."""
        self._update_learning_rate(self.policy.optimizer)
        data = self.rollout_buffer.data
        assert data is not None
        result = self.actor_step(data)
        value_losses = []
        for _ in range(self.n_critic_updates):
            for batch in self.rollout_buffer.minibatches(self.batch_size):
                values = self.policy.predict_values(batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                                    batch.response_mask)
                loss = masked_mean((values - batch.returns) ** 2, batch.token_mask())
                self.optimization_step(loss, "trpo/loss/value")
                value_losses.append(loss.item())
        self._n_updates += 1
        self.train_stats = {
            "trpo/kl": result.kl, "trpo/surrogate_before": result.surrogate_before,
            "trpo/surrogate_improvement": result.surrogate_after - result.surrogate_before,
            "trpo/line_search_fraction": result.step_fraction, "trpo/line_search_success": float(result.accepted),
            "trpo/loss/value": float(sum(value_losses) / len(value_losses)),
            "trpo/learning_rate": self.current_learning_rate(),
        }
        self.train_stats.update(self.value_stats())
        self.train_stats.update(self.objective_stats())
