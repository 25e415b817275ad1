"""Named registries through which configs refer to components (RL4LMs ids).

Each id maps to a class, or to a lazy ``"module:Class"`` entry point that is imported the first
time the id is used (as gymnasium's registration does). The built-in components are entry points,
so this module imports none of them, and validating a config imports only what the config names.

Users add their own components without editing the package::

    from rl4lms.registry import RewardFunctionRegistry
    RewardFunctionRegistry.register("my_reward", MyReward)           # a class
    RewardFunctionRegistry.register("my_reward", "my_pkg.rewards:MyReward")  # or an entry point

or with the decorator form ``@RewardFunctionRegistry.register("my_reward")``, or RL4LMs'
``RewardFunctionRegistry.add("my_reward", MyReward)``. An installed package can register through
the Python entry-point group ``rl4lms.components``, one entry per component named
``<kind>.<id>`` (kinds: datapool, reward_fn, metric, alg, policy), e.g. in its ``pyproject.toml``::

    [project.entry-points."rl4lms.components"]
    "reward_fn.my_reward" = "my_pkg.rewards:MyReward"
"""
from __future__ import annotations

import difflib
import importlib
import logging
from importlib import metadata
from typing import Any, Dict, Generic, List, Optional, Type, TypeVar, Union
from rl4lms.errors import RegistryError

T = TypeVar("T")

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rl4lms.components"
"""The Python entry-point group through which installed packages register components."""


def _entry_point_name(target: Any) -> str:
    """The ``"module:Class"`` entry point of a class (an entry point string as it is)."""
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', repr(target))}"


def _qualified_name(target: Any) -> str:
    """``module.Class`` of a class, or of a ``"module:Class"`` entry point."""
    module, _, attribute = _entry_point_name(target).partition(":")
    return f"{module}.{attribute}"


def load_entry_point(entry_point: str) -> Any:
    """The object a ``"module:attribute"`` string names (the attribute may be dotted)."""
    module_name, _, attribute = entry_point.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"entry point {entry_point!r} is not of the form 'module:Class'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


class Registry(Generic[T]):
    """A mapping from string ids to component classes of one kind, each given as the class or as a
    lazy ``"module:Class"`` entry point."""

    def __init__(self, kind: str, builtins: Optional[Dict[str, str]] = None) -> None:
        self.kind = kind
        self._entries: Dict[str, Union[Type[T], str]] = dict(builtins or {})

    def register(self, id: str, cls: Union[Type[T], str, None] = None, *, overwrite: bool = False) -> Any:
        """Register ``cls`` (a class or a ``"module:Class"`` entry point) under ``id``; without
        ``cls`` return a class decorator.

        Registering what the id already names (the same class, its entry point, a reloaded module)
        keeps or replaces the entry; another class under a taken id needs ``overwrite=True``.
        """
        if cls is None:
            def decorator(target: Type[T]) -> Type[T]:
                self.register(id, target, overwrite=overwrite)
                return target
            return decorator
        if not isinstance(id, str) or not id:
            raise RegistryError(f"{self.kind} ids must be non-empty strings, got {id!r}")
        if isinstance(cls, str) and ":" not in cls:
            raise RegistryError(f"{self.kind} id '{id}': entry point {cls!r} is not of the form 'module:Class'")
        existing = self._entries.get(id)
        same = existing is not None and _qualified_name(existing) == _qualified_name(cls)
        if existing is not None and not same and not overwrite:
            raise RegistryError(
                f"{self.kind} id '{id}' is already registered to {_qualified_name(existing)}; "
                "pass overwrite=True to replace it")
        if not (same and isinstance(cls, str)):  # an entry point never replaces the class it names
            self._entries[id] = cls
        return cls

    def add(self, id: str, cls: Type[T]) -> Type[T]:
        """RL4LMs' registration call, ``Registry.add(id, cls)``: the same as :meth:`register`."""
        return self.register(id, cls)

    def get(self, id: str) -> Type[T]:
        """Return the class registered under ``id`` (importing its module on first use), or raise
        with the valid choices."""
        register_installed_components()
        try:
            entry = self._entries[id]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown_message(id)) from None
        if isinstance(entry, str):
            try:
                loaded = load_entry_point(entry)
            except Exception as error:  # an entry point's module may fail in any way while importing
                raise RegistryError(f"{self.kind} id '{id}': cannot load its entry point '{entry}': "
                                    f"{type(error).__name__}: {error}") from error
            if self._entries.get(id) == entry:  # its import may have registered it already
                self._entries[id] = loaded
            return loaded
        return entry

    def entry_point(self, id: str) -> str:
        """The ``"module:Class"`` behind ``id``, without importing it."""
        if id not in self:
            raise RegistryError(self.unknown_message(id))
        return _entry_point_name(self._entries[id])

    def unknown_message(self, id: Any) -> str:
        close = difflib.get_close_matches(str(id), self.ids(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} id {id!r}.{hint} Valid choices: {', '.join(self.ids())}"

    def build(self, id: str, args: Optional[Dict[str, Any]] = None) -> T:
        """Instantiate the component registered under ``id`` with keyword ``args``."""
        return self.get(id)(**(args or {}))

    def ids(self) -> List[str]:
        """Every registered id, sorted (built-in, user and installed packages' components)."""
        register_installed_components()
        return sorted(self._entries)

    def __contains__(self, id: object) -> bool:
        register_installed_components()
        try:
            return id in self._entries
        except TypeError:  # an unhashable id is simply not registered
            return False

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, ids={self.ids()})"


DataPoolRegistry: Registry = Registry("datapool", {
    "commongen": "rl4lms.data_pools.commongen:CommonGen",
    "cnn_daily_mail": "rl4lms.data_pools.summarization:CNNDailyMail",
    "crd3": "rl4lms.data_pools.dialog:CRD3DialogueGeneration",
    "csv": "rl4lms.data_pools.files:CsvPool",
    "daily_dialog": "rl4lms.data_pools.dialog:DailyDialog",
    "dates": "rl4lms.data_pools.synthetic:DatesPool",
    "dummy_pool": "rl4lms.data_pools.synthetic:DummyPool",
    "gsm8k": "rl4lms.data_pools.gsm8k:GSM8K",
    "imdb": "rl4lms.data_pools.imdb:IMDB",
    "imdb_seq2seq": "rl4lms.data_pools.imdb:IMDBForSeq2Seq",
    "increasing_numbers": "rl4lms.data_pools.synthetic:IncreasingNumbersPool",
    "iwslt2017en_de": "rl4lms.data_pools.translation:IWSLT2017EnDe",
    "jsonl": "rl4lms.data_pools.files:JsonlPool",
    "narrative_qa": "rl4lms.data_pools.narrative_qa:NarrativeQA",
    "synthetic_arithmetic": "rl4lms.data_pools.synthetic:SyntheticArithmeticPool",
    "totto": "rl4lms.data_pools.totto:ToTTo",
    "wmt16": "rl4lms.data_pools.translation:WMT",
})
RewardFunctionRegistry: Registry = Registry("reward_fn", {
    "bert_score": "rl4lms.rewards.scored:BERTScoreReward",
    "bleu": "rl4lms.rewards.scored:BLEUReward",
    "chrf": "rl4lms.rewards.scored:ChrFReward",
    "combined": "rl4lms.rewards.combined:CombinedReward",
    "common_gen_preference_model": "rl4lms.rewards.preference:CommonGenPreferenceReward",
    "common_gen_repeat_penalty": "rl4lms.rewards.common_gen:CommonGenRepeatPenalty",
    "exact_match_answer": "rl4lms.rewards.final_answer:ExactMatchAnswerReward",
    "increasing_numbers": "rl4lms.rewards.synthetic:IncreasingNumbersReward",
    "intent_accuracy": "rl4lms.rewards.learned:IntentAccuracyReward",
    "learned_reward": "rl4lms.rewards.learned:LearnedReward",
    "meteor": "rl4lms.rewards.scored:MeteorReward",
    "rouge": "rl4lms.rewards.scored:RougeReward",
    "rouge_combined": "rl4lms.rewards.scored:RougeCombinedReward",
    "rouge_l_max": "rl4lms.rewards.scored:RougeLMaxReward",
    "sacre_bleu": "rl4lms.rewards.scored:SacreBLEUReward",
    "sentences_with_dates": "rl4lms.rewards.synthetic:SentencesWithDatesReward",
    "ter": "rl4lms.rewards.scored:TERReward",
})
MetricRegistry: Registry = Registry("metric", {
    "bert_score": "rl4lms.metrics.semantic:BERTScoreMetric",
    "bleu": "rl4lms.metrics.lexical:BLEUMetric",
    "bleu_totto": "rl4lms.metrics.totto:ToTToBLEUMetric",
    "causal_perplexity": "rl4lms.metrics.perplexity:CausalPerplexity",
    "chrf": "rl4lms.metrics.lexical:ChrFMetric",
    "cider": "rl4lms.metrics.cider:CIDErMetric",
    "dates": "rl4lms.metrics.synthetic:DateInText",
    "diversity": "rl4lms.metrics.diversity:DiversityMetrics",
    "exact_match_answer": "rl4lms.metrics.final_answer:ExactMatchAnswerMetric",
    "increasing_numbers": "rl4lms.metrics.synthetic:IncreasingNumbersInText",
    "intent_accuracy": "rl4lms.metrics.intent:IntentAccuracyMetric",
    "learned_reward": "rl4lms.metrics.semantic:LearnedRewardMetric",
    "meteor": "rl4lms.metrics.lexical:MeteorMetric",
    "parent_totto": "rl4lms.metrics.totto:ParentToTToMetric",
    "rouge": "rl4lms.metrics.lexical:RougeMetric",
    "rouge_l_max": "rl4lms.metrics.lexical:RougeLMaxMetric",
    "sacre_bleu": "rl4lms.metrics.lexical:SacreBLEUMetric",
    "spice": "rl4lms.metrics.spice:SpiceMetric",
    "ter": "rl4lms.metrics.lexical:TERMetric",
})
AlgorithmRegistry: Registry = Registry("alg", {
    "a2c": "rl4lms.algorithms.a2c:A2C",
    "grpo": "rl4lms.algorithms.grpo:GRPO",
    "nlpo": "rl4lms.algorithms.nlpo:NLPO",
    "ppo": "rl4lms.algorithms.ppo:PPO",
    "reinforce_plus_plus": "rl4lms.algorithms.reinforce_plus_plus:ReinforcePlusPlus",
    "rloo": "rl4lms.algorithms.rloo:RLOO",
    "supervised": "rl4lms.algorithms.supervised:Supervised",
    "trpo": "rl4lms.algorithms.trpo:TRPO",
})
PolicyRegistry: Registry = Registry("policy", {
    "causal_lm_actor_critic_policy": "rl4lms.policies.causal:CausalLMActorCriticPolicy",
    "maskable_causal_lm_actor_critic_policy": "rl4lms.policies.maskable:MaskableCausalLMActorCriticPolicy",
    "maskable_seq2seq_lm_actor_critic_policy": "rl4lms.policies.maskable:MaskableSeq2SeqLMActorCriticPolicy",
    "seq2seq_lm_actor_critic_policy": "rl4lms.policies.seq2seq:Seq2SeqLMActorCriticPolicy",
})

ALL_REGISTRIES: Dict[str, Registry] = {
    "datapool": DataPoolRegistry,
    "reward_fn": RewardFunctionRegistry,
    "metric": MetricRegistry,
    "alg": AlgorithmRegistry,
    "policy": PolicyRegistry,
}

_installed_packages_registered = False


def register_installed_components() -> None:
    """Register the components installed packages declare in the ``rl4lms.components`` entry-point
    group (once per process; nothing is imported until an id is used). An entry whose name is not
    ``<kind>.<id>``, or whose id is taken by another component, is skipped with a warning."""
    global _installed_packages_registered
    if _installed_packages_registered:
        return
    _installed_packages_registered = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        kind, _, component_id = entry.name.partition(".")
        if kind not in ALL_REGISTRIES or not component_id:
            logger.warning("entry point '%s = %s' of group %s is skipped: its name must be <kind>.<id> with kind one "
                           "of %s", entry.name, entry.value, ENTRY_POINT_GROUP, ", ".join(ALL_REGISTRIES))
            continue
        try:
            ALL_REGISTRIES[kind].register(component_id, entry.value)
        except RegistryError as error:
            logger.warning("entry point '%s = %s' is skipped: %s", entry.name, entry.value, error)
