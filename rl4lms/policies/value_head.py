"""Scalar value head on top of a language model's hidden states."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import save_file
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"
"""The value head's weights inside a ``save_pretrained`` folder, next to the LM's own files."""
CRITIC_DIR = "critic"
"""Sub-folder of a saved policy with a separate critic LM: that LM and the value head it feeds."""


def hidden_size(config: Any) -> int:
    """Width of a model's hidden states, whatever its config calls it."""
    for attribute in ("hidden_size", "d_model", "n_embd"):
        if getattr(config, attribute, None):
            return int(getattr(config, attribute))
    raise ValueError(f"cannot tell the hidden size of a {type(config).__name__} model config")


class ValueHead(nn.Module):
    """Linear map from a hidden state to a value estimate, computed in float32 (parameter names as
    TRL's ``v_head``: ``summary.weight``, ``summary.bias``), with optional dropout before it (TRL's
    ``summary_dropout_prob``; active in training mode only)."""

    def __init__(self, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden.float())).squeeze(-1)


def save_value_head(head: nn.Module, out_dir: Path, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """``head``'s weights (or ``state_dict``, a gathered copy of them) as ``out_dir/value_head.safetensors``."""
    state = head.state_dict() if state_dict is None else state_dict
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / VALUE_HEAD_FILE))
