"""Episode-level rollout storage: padded token tensors instead of per-token transitions."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator, List, Optional

import torch

from rl4lms.algorithms.advantages import compute_gae, whiten


@dataclass
class RolloutBatch:
    """A batch of finished episodes. Prompts are left-padded ``[B, P]``, responses right-padded ``[B, T]``.

    ``rewards`` are per-token totals (task reward + KL penalty); ``scores`` are each
    episode's summed task reward ``[B]``. ``advantages``/``returns`` are filled by
    :meth:`TextRolloutBuffer.finalize`.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    log_probs: torch.Tensor
    ref_log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    scores: torch.Tensor
    action_masks: Optional[torch.Tensor] = None
    """NLPO: the allowed tokens ``[B, T, V]`` each response token was sampled from."""
    loss_mask: Optional[torch.Tensor] = None
    """Response tokens that are the policy's actions ``[B, T]``, when some are not (e.g. tool output
    inside a tool-using episode): the model reads every token of ``response_mask``, but losses,
    KL and advantages count only these. ``None``: every response token is an action."""
    advantages: Optional[torch.Tensor] = None
    returns: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def token_mask(self) -> torch.Tensor:
        """Float mask of the action tokens: the loss mask if any, else the response mask."""
        return (self.loss_mask if self.loss_mask is not None else self.response_mask).float()

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The episodes at ``index``, trimmed to the longest prompt and response among them."""
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self) if getattr(self, f.name) is not None}
        prompt_keep = picked["prompt_mask"].sum(0) > 0
        response_len = int(picked["response_mask"].sum(1).max().item())
        for name, tensor in picked.items():
            if name.startswith("prompt"):
                picked[name] = tensor[:, prompt_keep]
            elif tensor.dim() >= 2:
                picked[name] = tensor[:, :max(response_len, 1)]
        return replace(self, **picked)


def _pad_to(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    """Pad dimension 1 of ``tensor`` to ``width`` with ``value``."""
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.full((tensor.shape[0], missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def concat_batches(batches: List[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Join batches, left-padding prompts and right-padding responses to common widths."""
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    response_width = max(b.response_ids.shape[1] for b in batches)
    joined = {}
    for f in fields(RolloutBatch):
        parts = [getattr(b, f.name) for b in batches]
        if parts[0] is None:
            continue
        if parts[0].dim() == 1:
            joined[f.name] = torch.cat(parts)
            continue
        is_prompt = f.name.startswith("prompt")
        # Padded positions are outside the response mask; masks there allow every token.
        value = pad_token_id if f.name.endswith("_ids") else (True if f.name == "action_masks" else 0)
        width = prompt_width if is_prompt else response_width
        joined[f.name] = torch.cat([_pad_to(p, width, value, left=is_prompt) for p in parts])
    return RolloutBatch(**joined)


class TextRolloutBuffer:
    """Collects :class:`RolloutBatch` chunks of one rollout, then serves shuffled minibatches."""

    def __init__(self, pad_token_id: int, gamma: float, gae_lambda: float, normalize_advantage: bool = True) -> None:
        self.pad_token_id = pad_token_id
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.normalize_advantage = normalize_advantage
        self._chunks: List[RolloutBatch] = []
        self.n_tokens = 0
        self.data: Optional[RolloutBatch] = None

    def reset(self) -> None:
        self._chunks = []
        self.n_tokens = 0
        self.data = None

    def add(self, batch: RolloutBatch) -> None:
        self._chunks.append(batch)
        self.n_tokens += int(batch.response_mask.sum().item())

    def finalize(self) -> RolloutBatch:
        """Join the chunks and compute (optionally whitened) GAE advantages and returns."""
        if not self._chunks:
            raise RuntimeError("finalize() called on an empty rollout buffer")
        data = concat_batches(self._chunks, self.pad_token_id)
        mask = data.token_mask()
        advantages, returns = compute_gae(data.rewards, data.values, mask, self.gamma, self.gae_lambda)
        if self.normalize_advantage and mask.sum() > 1:
            advantages = whiten(advantages, mask)
        self.data = replace(data, advantages=advantages, returns=returns)
        return self.data

    def minibatches(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Iterator[RolloutBatch]:
        """Episodes in random order, ``batch_size`` at a time (the last one may be smaller)."""
        if self.data is None:
            raise RuntimeError("call finalize() before minibatches()")
        order = torch.randperm(len(self.data), generator=generator)
        for start in range(0, len(order), batch_size):
            yield self.data.select(order[start:start + batch_size].to(self.data.prompt_ids.device))
