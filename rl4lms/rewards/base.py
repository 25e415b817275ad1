"""Reward function interfaces with RL4LMs' signatures.

* :class:`RewardFunction` is called once per generated token with
  ``(prev_observation, action, current_observation, done, meta_info)``.
* :class:`BatchedRewardFunction` scores whole episodes at once with
  ``(prompt_texts, gen_texts, ref_texts, dones, meta_infos)``; it is the fast path
  of the batched rollout and is what most sequence-level rewards should implement.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, TypeVar, Union

from rl4lms.registry import RewardFunctionRegistry

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
T = TypeVar("T")


def _pick(items: Sequence[T], indices: Sequence[int]) -> List[T]:
    return [items[ix] for ix in indices]


class ScoreReward(BatchedRewardFunction):
    """Scores finished episodes in one batch with :meth:`scores`; adds the shaping reward if any."""

    def __init__(self, shaping_fn: Optional[str] = None, shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        self.shaping: Optional[BatchedRewardFunction] = None
        if shaping_fn is not None:
            shaping = RewardFunctionRegistry.build(shaping_fn, shaping_fn_args)
            if not isinstance(shaping, BatchedRewardFunction):
                raise ValueError(f"shaping_fn '{shaping_fn}' is not a batched reward function")
            self.shaping = shaping

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        raise NotImplementedError

    def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                 dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
        rewards = [0.0] * len(gen_texts)
        done = [ix for ix, finished in enumerate(dones) if finished]
        if not done:
            return rewards
        args = (_pick(prompt_texts, done), _pick(gen_texts, done), _pick(ref_texts, done),
                _pick(meta_infos, done) if meta_infos is not None else None)
        scores = [float(s) for s in self.scores(*args)]
        if self.shaping is not None:
            shaped = self.shaping(args[0], args[1], args[2], [True] * len(done), args[3])
            scores = [s + float(extra) for s, extra in zip(scores, shaped)]
        for ix, score in zip(done, scores):
            rewards[ix] = score
        return rewards
