"""What the supervised RLHF stages share: JSON Lines records and the gradient step (their seeded
minibatches are :func:`rl4lms.algorithms.teacher_forcing.minibatches`, the ``supervised`` algorithm's)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Union

import torch
from torch import nn

from rl4lms.algorithms.gradient_step import check_finite, clipped_step
from rl4lms.data_pools.sources import read_jsonl


def read_records(path: Union[str, Path], required: Sequence[str], what: str) -> List[Dict[str, Any]]:
    """Rows of a ``.jsonl`` file that all have the ``required`` string fields; errors name file and row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: file '{path}' does not exist")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{what}: '{path}' holds no records")
    for ix, row in enumerate(rows, 1):
        missing = [f for f in required if not isinstance(row.get(f), str)]
        if missing:
            raise ValueError(f"{what}: {path} row {ix} has no string field(s) {missing}; fields: {', '.join(row)}")
    return rows


class GradientStepper:
    """AdamW over the trainable parameters, with gradient clipping and a finite-loss check.

    Args:
        model: the model whose parameters with ``requires_grad`` are trained.
        learning_rate: AdamW's learning rate.
        max_grad_norm: gradient clipping.
        name: the loss's statistic name, in the error of a non-finite loss.
    """

    def __init__(self, model: nn.Module, learning_rate: float, max_grad_norm: float, name: str) -> None:
        if not learning_rate > 0 or not max_grad_norm > 0:
            raise ValueError(f"learning_rate and max_grad_norm must be > 0, got {learning_rate}, {max_grad_norm}")
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=learning_rate)
        self.max_grad_norm = max_grad_norm
        self.name = name

    def step(self, loss: torch.Tensor) -> float:
        """One clipped AdamW step on ``loss``; returns the loss."""
        value = check_finite(loss, f"{self.name} became {{value}}; lower the learning rate or check the data")
        clipped_step(loss, self.optimizer, self.parameters, self.max_grad_norm)
        return value


def run_epochs(num_epochs: int, epoch: Callable[[int], Dict[str, float]]) -> List[Dict[str, float]]:
    """Call ``epoch(k)`` for k = 1..num_epochs and collect its statistics (with the epoch number)."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    return [{"epoch": float(k), **epoch(k)} for k in range(1, num_epochs + 1)]
