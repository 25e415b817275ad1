"""The observation of a text-generation episode: prompt, generated context and their texts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

OBSERVATION_KEYS = ("prompt_or_input_encoded_pt", "prompt_or_input_attention_mask_pt", "context_encoded_pt",
                    "context_attention_mask_pt", "input_encoded_pt", "input_attention_mask_pt")


@dataclass
class Observation:
    """State of one episode (RL4LMs' field names); arrays are fixed-length int64 numpy vectors.

    The prompt is left-padded to ``max_prompt_length``; the context (generated tokens) is
    right-padded to ``max_episode_length`` (plus one for a context start token);
    ``input_*`` holds prompt + context, left-padded.
    """

    prompt_or_input_encoded_pt: np.ndarray
    prompt_or_input_attention_mask_pt: np.ndarray
    prompt_or_input_text: str
    context_encoded_pt: np.ndarray
    context_attention_mask_pt: np.ndarray
    context_text: str
    target_or_reference_texts: List[str]
    input_encoded_pt: np.ndarray
    input_attention_mask_pt: np.ndarray
    action_history: List[int] = field(default_factory=list)
    meta_info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, np.ndarray]:
        """The array part, as returned to gymnasium / stable-baselines3."""
        return {key: getattr(self, key) for key in OBSERVATION_KEYS}


@dataclass(frozen=True)
class ObservationLayout:
    """The env's observation shape, to rebuild per-token observations from whole episodes (for
    RL4LMs-style code that trains on one transition per generated token)."""

    prompt_width: int
    """``max_prompt_length``: prompts are left-padded to it."""
    context_width: int
    """``max_episode_length`` plus one for a context start token."""
    context_start_token: Optional[int]
    pad_token_id: int

    def transitions(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                    response_mask: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """One observation per valid response token: what the env showed before that token.

        Returns ``(observations, actions, rows, cols)``: a dict with the six
        :data:`OBSERVATION_KEYS` tensors ``[N, width]``, the tokens taken ``[N]``, and the
        ``(episode, position)`` of each transition in the ``[B, T]`` response tensors.
        """
        rows, cols = response_mask.nonzero(as_tuple=True)
        batch, width = prompt_ids.shape
        if width > self.prompt_width:
            raise ValueError(f"prompts of {width} tokens do not fit the observation's {self.prompt_width}")
        prompt = prompt_ids.new_full((batch, self.prompt_width), self.pad_token_id)
        prompt_attention = prompt_mask.new_zeros((batch, self.prompt_width))
        prompt[:, self.prompt_width - width:] = prompt_ids
        prompt_attention[:, self.prompt_width - width:] = prompt_mask
        history = response_ids[rows]
        history_mask = (torch.arange(history.shape[1], device=history.device)[None] < cols[:, None]).long()
        if self.context_start_token is not None:
            history = torch.cat([history.new_full((len(rows), 1), self.context_start_token), history], dim=1)
            history_mask = torch.cat([history_mask.new_ones((len(rows), 1)), history_mask], dim=1)
        if history.shape[1] > self.context_width:
            raise ValueError(f"responses of {response_ids.shape[1]} tokens do not fit the observation's context")
        context = history.new_full((len(rows), self.context_width), self.pad_token_id)
        context_attention = history_mask.new_zeros((len(rows), self.context_width))
        context[:, :history.shape[1]] = history * history_mask + self.pad_token_id * (1 - history_mask)
        context_attention[:, :history.shape[1]] = history_mask
        joined = torch.cat([prompt[rows], context], dim=1)
        joined_mask = torch.cat([prompt_attention[rows], context_attention], dim=1)
        # Move the padding of each row to its left (a stable sort keeps the tokens in order).
        order = torch.sort(joined_mask, dim=1, stable=True).indices
        observations = {
            "prompt_or_input_encoded_pt": prompt[rows], "prompt_or_input_attention_mask_pt": prompt_attention[rows],
            "context_encoded_pt": context, "context_attention_mask_pt": context_attention,
            "input_encoded_pt": joined.gather(1, order), "input_attention_mask_pt": joined_mask.gather(1, order),
        }
        return observations, response_ids[rows, cols], rows, cols
