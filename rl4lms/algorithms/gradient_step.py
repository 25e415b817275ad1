"""The one gradient step of the project: every update, RL or supervised, ends in :func:`clipped_step`."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from rl4lms.errors import NonFiniteLossError


def check_finite(loss: torch.Tensor, message: str) -> float:
    """``loss`` as a float; :class:`NonFiniteLossError` with ``message`` (formatted with the value as
    ``{value}``) when it is NaN or infinite."""
    value = float(loss.item())
    if not math.isfinite(value):
        raise NonFiniteLossError(message.format(value=value))
    return value


def clipped_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
                 max_grad_norm: float) -> float:
    """Back-propagate ``loss``, clip the gradients of ``parameters`` to ``max_grad_norm`` and step
    ``optimizer`` (gradients zeroed first); returns the pre-clip gradient norm."""
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    return float(grad_norm)
