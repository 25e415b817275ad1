"""Proximal Policy Optimization on token-level rewards (RL4LMs' ``ppo``)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Type

import numpy as np
import torch

from rl4lms.algorithms.advantages import masked_mean, value_statistics
from rl4lms.algorithms.buffer import RolloutBatch
from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.losses import clipped_surrogate
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.base import LMActorCriticPolicy, PolicyOutput

logger = logging.getLogger(__name__)


@dataclass
class PPOLoss:
    """The clipped surrogate and value losses of one minibatch, with their diagnostics.

    KL estimates of the update (Schulman's k1/k2/k3 of ``r = pi / pi_old``): ``policy_kl`` is
    ``mean(-log r)``, ``kl_k2`` ``mean((log r)^2) / 2`` (TRL's ``approxkl``) and ``approx_kl``
    ``mean(r - 1 - log r)`` (stable-baselines3's, behind ``target_kl``). ``clipfrac`` is the share of
    tokens where the clipped term is the larger one, i.e. where clipping stops the gradient.
    """

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    clipfrac: float
    approx_kl: float
    policy_kl: float
    value_clipfrac: float
    kl_k2: float
    ratio: torch.Tensor
    """The detached ratios ``[B, T]`` (1 on padding)."""


def ppo_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float,
             clip_range_vf: Optional[float]) -> PPOLoss:
    """Token-level PPO losses averaged over the valid tokens of ``mask``.

    Policy: ``mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(logp - logp_old)``.
    Value: ``mean(max((V - R)^2, (V_clip - R)^2))`` where ``V_clip`` keeps ``V`` within
    ``clip_range_vf`` of the rollout's value (no clipping when ``clip_range_vf`` is None),
    following stable-baselines3's scale (the 1/2 lives in ``vf_coef``).
    """
    log_ratio = (log_probs - old_log_probs) * mask
    ratio = torch.exp(log_ratio)
    per_token = clipped_surrogate(ratio, advantages, clip_range, clip_range)
    policy_loss = masked_mean(per_token, mask)
    if clip_range_vf is None:
        values_for_loss = values
    else:
        values_for_loss = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    value_errors = torch.max((values - returns) ** 2, (values_for_loss - returns) ** 2)
    value_loss = masked_mean(value_errors, mask)
    with torch.no_grad():
        clipfrac = masked_mean((per_token > -advantages * ratio).float(), mask).item()
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask).item()
        policy_kl = masked_mean(-log_ratio, mask).item()
        kl_k2 = masked_mean(0.5 * log_ratio ** 2, mask).item()
        value_clipfrac = masked_mean(((values_for_loss - returns) ** 2 > (values - returns) ** 2).float(), mask).item()
    return PPOLoss(policy_loss, value_loss, clipfrac, approx_kl, policy_kl, value_clipfrac, kl_k2, ratio.detach())


EARLY_STOP_STATISTICS = ("approx_kl", "last_policy_kl")


class PPO(LMOnPolicyAlgorithm):
    """PPO with clipped ratio, optional value clipping and a ``target_kl`` early stop.

    Subclass and override :meth:`train` to change the update; rollouts, KL control and
    stats come from :class:`LMOnPolicyAlgorithm`.

    Args (``alg.args``; the policy, env and KL controller are built from the config):
        n_steps: generated tokens per rollout and generation batch (RL4LMs' meaning).
        batch_size: episodes per minibatch.
        n_epochs: passes over the rollout per update.
        learning_rate: AdamW's learning rate; lr_scheduler_type: its schedule over the run.
        gamma, gae_lambda: GAE's discount and lambda.
        clip_range: the ratio clip; clip_range_vf: the value clip around the rollout's values (None: none).
        normalize_advantage: whiten the advantages over the rollout.
        ent_coef, vf_coef: weights of the entropy bonus and of the value loss ``(V - R)^2``.
        max_grad_norm: gradient clipping.
        target_kl: stop the update's epochs once the KL statistic exceeds ``1.5 * target_kl`` (None: never).
        early_stop_statistic: that statistic: "approx_kl" (the epoch's mean ``r - 1 - log r``,
            stable-baselines3) or "last_policy_kl" (the last minibatch's ``mean(log pi_old - log pi)``, TRL).
        ratio_threshold: a minibatch whose mean ratio exceeds it contributes a zero loss (TRL's guard
            against loss spikes: the optimizer still steps); None: no guard.
        seed, device, verbose, policy_kwargs: as in stable-baselines3.
    """

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
                 n_envs: int = 1, learning_rate: float = 1e-5, n_steps: int = 128, batch_size: int = 64,
                 n_epochs: int = 5, gamma: float = 0.99, gae_lambda: float = 0.95, clip_range: float = 0.2,
                 clip_range_vf: Optional[float] = None, normalize_advantage: bool = True,
                 lr_scheduler_type: Optional[str] = "constant", ent_coef: float = 0.0, vf_coef: float = 0.5,
                 max_grad_norm: float = 0.5, target_kl: Optional[float] = None,
                 early_stop_statistic: str = "approx_kl", ratio_threshold: Optional[float] = None,
                 policy_kwargs: Optional[Dict] = None, verbose: int = 0, seed: Optional[int] = None,
                 device: str = "auto", _init_setup_model: bool = True) -> None:
        if batch_size < 1 or n_epochs < 1:
            raise ValueError(f"alg.args.batch_size and n_epochs must be >= 1, got {batch_size} and {n_epochs}")
        if clip_range <= 0:
            raise ValueError(f"alg.args.clip_range must be > 0, got {clip_range}")
        if early_stop_statistic not in EARLY_STOP_STATISTICS:
            raise ValueError(f"alg.args.early_stop_statistic {early_stop_statistic!r} is not one of "
                             f"{', '.join(EARLY_STOP_STATISTICS)}")
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.target_kl = target_kl
        self.early_stop_statistic = early_stop_statistic
        self.ratio_threshold = ratio_threshold
        self.update_arrays: Dict[str, torch.Tensor] = {}
        """The last update's per-token ``ratio`` and ``advantages`` of every minibatch (valid tokens)."""
        super().__init__(policy=policy, env=env, kl_controller=kl_controller, n_envs=n_envs,
                         learning_rate=learning_rate, n_steps=n_steps, gamma=gamma, gae_lambda=gae_lambda,
                         ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                         normalize_advantage=normalize_advantage, lr_scheduler_type=lr_scheduler_type,
                         policy_kwargs=policy_kwargs, verbose=verbose,
                         seed=seed, device=device, _init_setup_model=_init_setup_model)

    def minibatch_loss(self, batch: RolloutBatch) -> Tuple[torch.Tensor, PPOLoss, PolicyOutput, torch.Tensor]:
        """Total loss of one minibatch, its :class:`PPOLoss` and the new values/entropy. Past
        ``ratio_threshold`` the losses are multiplied by zero."""
        out = self.batch_outputs(batch)
        mask = batch.token_mask()
        assert batch.advantages is not None and batch.returns is not None
        losses = ppo_loss(out.log_probs, batch.log_probs, batch.advantages, out.values, batch.values, batch.returns,
                          mask, self.clip_range, self.clip_range_vf)
        entropy = masked_mean(out.entropy, mask)
        total = losses.policy_loss + self.vf_coef * losses.value_loss - self.ent_coef * entropy
        if self.ratio_threshold is not None and masked_mean(losses.ratio, mask).item() > self.ratio_threshold:
            logger.warning("the mean ratio of a minibatch (%.2f) exceeds ratio_threshold %.2f: its loss is zeroed",
                           masked_mean(losses.ratio, mask).item(), self.ratio_threshold)
            losses.policy_loss, losses.value_loss, total = losses.policy_loss * 0, losses.value_loss * 0, total * 0
        return total, losses, out, entropy

    def train(self) -> None:
        """``n_epochs`` passes of minibatch updates over the buffered rollout."""
        self._update_learning_rate(self.policy.optimizer)
        self.policy.set_training_mode(True)
        records: Dict[str, List[float]] = {}
        arrays: Dict[str, List[torch.Tensor]] = {"ratio": [], "advantages": []}
        minibatch_values: Dict[str, List[torch.Tensor]] = {}
        stop_early = False
        for _ in range(self.n_epochs):
            epoch_kls = []
            for batch in self.rollout_buffer.minibatches(self.batch_size):
                total, losses, out, entropy = self.minibatch_loss(batch)
                grad_norm = self.optimization_step(total, "ppo/loss/total")
                mask = batch.token_mask()
                value_error = masked_mean((out.values.detach() - batch.returns) ** 2, mask)
                for name, value in {
                    "ppo/loss/policy": losses.policy_loss.item(), "ppo/loss/value": losses.value_loss.item(),
                    "ppo/loss/total": total.item(), "ppo/policy/entropy": entropy.item(),
                    "ppo/policy/approxkl": losses.kl_k2, "ppo/policy/policykl": losses.policy_kl,
                    "ppo/policy/clipfrac": losses.clipfrac, "ppo/val/vpred": masked_mean(out.values.detach(), mask).item(),
                    "ppo/val/error": value_error.item(), "ppo/val/clipfrac": losses.value_clipfrac,
                }.items():
                    records.setdefault(name, []).append(value)
                if not math.isnan(grad_norm):  # NaN: this call only accumulated gradients
                    records.setdefault("ppo/grad_norm", []).append(grad_norm)
                epoch_kls.append(losses.approx_kl if self.early_stop_statistic == "approx_kl" else losses.policy_kl)
                arrays["ratio"].append(losses.ratio[mask > 0].cpu())
                arrays["advantages"].append(batch.advantages[mask > 0].detach().cpu())
                for name, value in value_statistics(batch.returns, batch.values, batch.advantages, mask).items():
                    minibatch_values.setdefault(name, []).append(value)  # read after the update: no sync per step
            epoch_kl = float(np.mean(epoch_kls)) if self.early_stop_statistic == "approx_kl" else epoch_kls[-1]
            epoch_kl = self.mean_across_processes({"kl": epoch_kl})["kl"]
            if self.target_kl is not None and epoch_kl > 1.5 * self.target_kl:
                stop_early = True
                break
        self._n_updates += self.n_epochs
        self.update_arrays = {name: torch.cat(parts) for name, parts in arrays.items()}
        self.minibatch_value_stats = {name: float(np.mean([value.item() for value in values]))
                                      for name, values in minibatch_values.items()}
        """:func:`value_statistics` of each minibatch, averaged over the update (TRL logs these; the
        ``train_stats`` of the same names are over the whole rollout)."""
        self.train_stats = {name: float(np.mean(values)) for name, values in records.items()}
        self.train_stats.update(self.value_stats())
        self.train_stats.update(self.objective_stats())
        self.train_stats["ppo/learning_rate"] = self.current_learning_rate()
        self.train_stats["ppo/early_stop"] = float(stop_early)
