"""Named registries through which configs refer to components (RL4LMs ids).

Users add their own components without editing the package::

    from rl4lms.registry import RewardFunctionRegistry
    RewardFunctionRegistry.register("my_reward", MyReward)

or with the decorator form ``@RewardFunctionRegistry.register("my_reward")``.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, Generic, List, Optional, Type, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Raised for an unknown or conflicting registry id; the message lists valid ids."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


def _qualified_name(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', repr(cls))}"


class Registry(Generic[T]):
    """A mapping from string ids to component classes of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Type[T]] = {}

    def register(self, id: str, cls: Optional[Type[T]] = None, *, overwrite: bool = False) -> Any:
        """Register ``cls`` under ``id``; without ``cls`` return a class decorator.

        Re-registering a class of the same module and name (a reloaded module) replaces the entry;
        another class under a taken id needs ``overwrite=True``.
        """
        if cls is None:
            def decorator(target: Type[T]) -> Type[T]:
                self.register(id, target, overwrite=overwrite)
                return target
            return decorator
        if not isinstance(id, str) or not id:
            raise RegistryError(f"{self.kind} ids must be non-empty strings, got {id!r}")
        existing = self._entries.get(id)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls) and not overwrite:
            raise RegistryError(
                f"{self.kind} id '{id}' is already registered to {_qualified_name(existing)}; "
                "pass overwrite=True to replace it")
        self._entries[id] = cls
        return cls

    def add(self, id: str, cls: Type[T]) -> Type[T]:
        """RL4LMs' registration call, ``Registry.add(id, cls)``: the same as :meth:`register`."""
        return self.register(id, cls)

    def get(self, id: str) -> Type[T]:
        """Return the class registered under ``id`` or raise with the valid choices."""
        try:
            return self._entries[id]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown_message(id)) from None

    def unknown_message(self, id: Any) -> str:
        close = difflib.get_close_matches(str(id), self.ids(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} id {id!r}.{hint} Valid choices: {', '.join(self.ids())}"

    def build(self, id: str, args: Optional[Dict[str, Any]] = None) -> T:
        """Instantiate the component registered under ``id`` with keyword ``args``."""
        return self.get(id)(**(args or {}))

    def ids(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, id: object) -> bool:
        return id in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, ids={self.ids()})"


DataPoolRegistry: Registry = Registry("datapool")
RewardFunctionRegistry: Registry = Registry("reward_fn")
MetricRegistry: Registry = Registry("metric")
AlgorithmRegistry: Registry = Registry("alg")
PolicyRegistry: Registry = Registry("policy")

ALL_REGISTRIES: Dict[str, Registry] = {
    "datapool": DataPoolRegistry,
    "reward_fn": RewardFunctionRegistry,
    "metric": MetricRegistry,
    "alg": AlgorithmRegistry,
    "policy": PolicyRegistry,
}


def load_builtin_components() -> None:
    """Import the package modules whose import registers the built-in components."""
    import rl4lms.algorithms.a2c  # noqa: F401
    import rl4lms.algorithms.grpo  # noqa: F401
    import rl4lms.algorithms.nlpo  # noqa: F401
    import rl4lms.algorithms.ppo  # noqa: F401
    import rl4lms.algorithms.reinforce_plus_plus  # noqa: F401
    import rl4lms.algorithms.rloo  # noqa: F401
    import rl4lms.algorithms.supervised  # noqa: F401
    import rl4lms.algorithms.trpo  # noqa: F401
    import rl4lms.data_pools.commongen  # noqa: F401
    import rl4lms.data_pools.dialog  # noqa: F401
    import rl4lms.data_pools.files  # noqa: F401
    import rl4lms.data_pools.imdb  # noqa: F401
    import rl4lms.data_pools.narrative_qa  # noqa: F401
    import rl4lms.data_pools.summarization  # noqa: F401
    import rl4lms.data_pools.synthetic  # noqa: F401
    import rl4lms.data_pools.totto  # noqa: F401
    import rl4lms.data_pools.translation  # noqa: F401
    import rl4lms.metrics.cider  # noqa: F401
    import rl4lms.metrics.diversity  # noqa: F401
    import rl4lms.metrics.intent  # noqa: F401
    import rl4lms.metrics.lexical  # noqa: F401
    import rl4lms.metrics.perplexity  # noqa: F401
    import rl4lms.metrics.semantic  # noqa: F401
    import rl4lms.metrics.spice  # noqa: F401
    import rl4lms.metrics.synthetic  # noqa: F401
    import rl4lms.metrics.totto  # noqa: F401
    import rl4lms.policies.causal  # noqa: F401
    import rl4lms.policies.maskable  # noqa: F401
    import rl4lms.policies.seq2seq  # noqa: F401
    import rl4lms.rewards.combined  # noqa: F401
    import rl4lms.rewards.common_gen  # noqa: F401
    import rl4lms.rewards.learned  # noqa: F401
    import rl4lms.rewards.preference  # noqa: F401
    import rl4lms.rewards.scored  # noqa: F401
    import rl4lms.rewards.synthetic  # noqa: F401
