"""The observation of a text-generation episode: prompt, generated context and their texts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

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
