"""Policy-gradient loss terms shared by the algorithms: the clipped surrogate per token and the ways
of averaging per-token losses into one number (TRL's ``loss_type``)."""
from __future__ import annotations

from typing import Optional

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
"""How per-token losses become the minibatch loss (TRL's names): ``grpo`` averages each sequence's
tokens, then the sequences; ``bnpo`` averages the minibatch's tokens; ``dr_grpo`` sums the tokens
and divides by ``sequences x max_completion_length``; ``dapo`` sums the tokens and divides by the
tokens of the whole (all-process) minibatch."""


IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def importance_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor,
                     level: str = "token") -> torch.Tensor:
    """``pi / pi_old`` per token ``[B, T]`` (1 on padding), or per sequence (GSPO): every token of a
    sequence gets ``exp`` of the sequence's mean token log-ratio, whose gradient reaches each of its
    valid tokens."""
    log_ratio = (log_probs - old_log_probs) * mask
    if level == "sequence":
        log_ratio = (log_ratio.sum(1) / mask.sum(1).clamp(min=1.0))[:, None].expand_as(log_ratio)
    elif level != "token":
        raise ValueError(f"importance_sampling_level {level!r} is not one of {', '.join(IMPORTANCE_SAMPLING_LEVELS)}")
    return torch.exp(log_ratio)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float,
                      epsilon_high: float) -> torch.Tensor:
    """PPO's per-token clipped objective, as a loss: ``max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))``.

    PPO clips symmetrically (``epsilon_low == epsilon_high``); DAPO's clip-higher raises only the
    upper bound. The clipped term is the larger one exactly where clipping stops the gradient.
    """
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    return torch.max(unclipped, clipped)


def aggregate_token_losses(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
                           max_completion_length: Optional[int] = None,
                           tokens_per_process: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The minibatch loss of per-token losses ``[B, T]`` over the valid tokens of ``mask`` (see
    :data:`LOSS_TYPES`). ``dr_grpo`` needs ``max_completion_length``. ``dapo`` divides by
    ``tokens_per_process``: the valid tokens of the minibatch summed over all processes, divided by
    the number of processes (data-parallel training averages the processes' gradients, so the
    result is the token sum over the global minibatch divided by its token count); by default this
    minibatch's own count."""
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        return masked.sum() / (per_token.shape[0] * max_completion_length)
    if loss_type == "dapo":
        tokens = mask.sum() if tokens_per_process is None else tokens_per_process
        return masked.sum() / tokens.clamp(min=1.0)
    raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
