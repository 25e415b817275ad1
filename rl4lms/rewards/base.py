"""Reward function interfaces with RL4LMs' signatures.

* :class:`RewardFunction` is called once per generated token with
  ``(prev_observation, action, current_observation, done, meta_info)``.
* :class:`BatchedRewardFunction` scores whole episodes at once with
  ``(prompt_texts, gen_texts, ref_texts, dones, meta_infos)``; it is the fast path
  of the batched rollout and is what most sequence-level rewards should implement.
"""
from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, TypeVar, Union

from rl4lms.errors import RewardOutputError
from rl4lms.registry import RewardFunctionRegistry

if TYPE_CHECKING:
    from rl4lms.envs.observation import Observation


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:77]}..." if len(text) > 80 else text


def reward_value(reward_fn: object, value: Any) -> float:
    """``value`` (a real number, or a one-number tensor or array) as a float; anything else is a
    :class:`RewardOutputError` naming ``reward_fn``'s class and the value."""
    number = value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value
    if not isinstance(number, numbers.Real):
        raise RewardOutputError(f"reward function {type(reward_fn).__name__} returned {_shown(value)} "
                                f"({type(value).__name__}) where a number was expected")
    return float(number)


def reward_values(reward_fn: object, values: Any, count: int) -> List[float]:
    """A batched reward function's output for ``count`` generations as floats (see :func:`reward_value`)."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") or getattr(values, "ndim", 1) != 1:
        raise RewardOutputError(f"reward function {type(reward_fn).__name__} returned {_shown(values)} "
                                f"({type(values).__name__}) where a list of {count} numbers was expected")
    if len(values) != count:
        raise RewardOutputError(f"reward function {type(reward_fn).__name__} returned {len(values)} scores "
                                f"for {count} generations")
    return [reward_value(reward_fn, value) for value in values]


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
        scores = reward_values(self, self.scores(*args), len(done))
        if self.shaping is not None:
            shaped = self.shaping(args[0], args[1], args[2], [True] * len(done), args[3])
            scores = [s + extra for s, extra in zip(scores, reward_values(self.shaping, shaped, len(done)))]
        for ix, score in zip(done, scores):
            rewards[ix] = score
        return rewards
