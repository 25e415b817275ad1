"""Per-token rewards with the KL penalty, GAE, the critic-free advantage estimators and masked
statistics over padded token tensors."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (unbiased, or the population variance)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    squared = ((values - mean) ** 2 * mask).sum()
    return squared / ((count - 1) if unbiased else count).clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries to unit variance (and zero mean); masked-out entries become 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    centred = values - mean
    out = centred * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def normalize_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(r - mean) / (std + 1e-8)`` over every valid token of the rollout, with the population
    standard deviation: RL4LMs' ``kl_div.norm_reward``, applied to the KL-penalised rewards before GAE."""
    mean = masked_mean(rewards, mask)
    std = masked_var(rewards, mask, unbiased=False).sqrt()
    return (rewards - mean) / (std + 1e-8) * mask


def value_statistics(returns: torch.Tensor, values: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """TRL's ``ppo/returns/*``, ``ppo/val/mean``, ``ppo/val/var`` and ``ppo/policy/advantages_mean``
    over the valid tokens of ``mask`` (detached 0-d tensors; variances unbiased)."""
    with torch.no_grad():
        return {"ppo/returns/mean": masked_mean(returns, mask), "ppo/returns/var": masked_var(returns, mask),
                "ppo/val/mean": masked_mean(values, mask), "ppo/val/var": masked_var(values, mask),
                "ppo/policy/advantages_mean": masked_mean(advantages, mask)}


KL_ESTIMATORS = ("kl", "abs", "mse", "full", "k3")
"""Per-token KL penalties (TRL's ``kl_penalty``): the log-ratio, its absolute value, half its square,
the exact KL of the whole next-token distributions, or Schulman's non-negative ``k3`` estimator
``exp(-d) + d - 1`` of the log-ratio ``d`` (GRPO's KL term)."""


def token_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str = "kl",
             logits: Optional[torch.Tensor] = None, ref_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token KL penalty ``[B, T]`` between the policy and the reference.

    ``log_probs``/``ref_log_probs`` are the sampled tokens' log-probabilities; ``"full"`` needs the
    logits ``[B, T, V]`` of both and returns ``sum_v p(v) (log p(v) - log p_ref(v))``.
    """
    log_ratio = log_probs - ref_log_probs
    if estimator == "kl":
        return log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    if estimator == "mse":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    if estimator == "full":
        if logits is None or ref_logits is None:
            raise ValueError("the 'full' KL penalty needs the logits of the policy and of the reference")
        log_p, ref_log_p = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
        return (log_p.exp() * (log_p - ref_log_p)).sum(-1)
    raise ValueError(f"KL penalty {estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")


def terminal_rewards(scores: Any, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` rewards that are zero except each row's score on the last position where ``mask`` is
    set: a whole episode's score, given at its last token."""
    mask = mask.float()
    last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(len(mask), device=mask.device), last] = torch.as_tensor(
        scores, dtype=mask.dtype, device=mask.device).reshape(-1)
    return rewards


def kl_penalized_rewards(task_rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                         kl_coeff: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``task_reward_t - kl_coeff * kl_t`` on valid tokens, for a per-token KL penalty ``kl``
    (:func:`token_kl`). Returns the total per-token reward and the penalty, both zero on padding."""
    kl = kl * mask
    return (task_rewards - kl_coeff * kl) * mask, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                gae_lambda: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded episodes ``[B, T]``.

    The episode ends after its last valid token, so the value after it is 0. Returns
    ``(advantages, returns)`` with ``returns = advantages + values``; both 0 on padding.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        current = delta + gamma * gae_lambda * next_advantage
        advantages[:, t] = current * valid
        # Padding after the end keeps carrying zeros; a valid step passes its own value back.
        next_value = torch.where(valid > 0, values[:, t], next_value)
        next_advantage = torch.where(valid > 0, current, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_k gamma^k r_{t+k}`` over each right-padded episode ``[B, T]`` (0 on padding): GAE
    with no values and ``lambda = 1``."""
    return compute_gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]


SCALE_REWARDS = ("group", "batch", "none")


def group_relative_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                              epsilon: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages ``[N]`` of episode rewards ``[N]`` that come in consecutive groups of
    ``group_size`` completions of one prompt: each reward minus its group's mean, divided by
    ``std + epsilon``, where ``std`` (unbiased) is the group's (``scale_rewards: group``), the whole
    batch's (``batch``), or no division at all (``none``, Dr. GRPO)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards {scale_rewards!r} is not one of {', '.join(SCALE_REWARDS)}")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = grouped.std(1, keepdim=True).expand_as(grouped).reshape(-1) if group_size > 1 \
            else torch.zeros_like(rewards)
    else:
        std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return centred / (std + epsilon)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's advantages ``[N]``: each episode's reward minus the mean reward of the other
    ``group_size - 1`` completions of its prompt (groups are consecutive rows)."""
    if group_size < 2:
        raise ValueError("the leave-one-out baseline needs groups of at least 2 completions")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def flat_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups of ``group_size`` consecutive rewards ``[N]`` hold one value only ``[N / group_size]``:
    their group-relative advantages are all zero (DAPO's dynamic sampling drops them)."""
    grouped = rewards.view(-1, group_size)
    return grouped.max(1).values == grouped.min(1).values
