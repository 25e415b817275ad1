"""Reward function interfaces with RL4LMs' signatures.

* :class:`RewardFunction` is called once per generated token with
  ``(prev_observation, action, current_observation, done, meta_info)``.
* :class:`BatchedRewardFunction` scores whole episodes at once with
  ``(prompt_texts, gen_texts, ref_texts, dones, meta_infos)``; it is the fast path
  of the batched rollout and is what most sequence-level rewards should implement.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

if TYPE_CHECKING:
    from rl4lms.envs.observation import Observation


class RewardOutputError(ValueError):
    """A reward function returned something unusable (wrong count, NaN or infinite values)."""


class RewardFunction(ABC):
    """Per-step reward: called after every action of an episode."""

    @abstractmethod
    def __call__(self, prev_observation: "Observation", action: int, current_observation: "Observation",
                 done: bool, meta_info: Optional[Dict[str, Any]] = None) -> float:
        ...


class BatchedRewardFunction(ABC):
    """Episode-level reward computed for a batch of finished generations."""

    @abstractmethod
    def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                 dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
        ...


AnyRewardFunction = Union[RewardFunction, BatchedRewardFunction]
