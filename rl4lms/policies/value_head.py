"""Scalar value head on top of a language model's hidden states."""
from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """Linear map from a hidden state to a value estimate, computed in float32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)
