"""Registry: register / get / build, errors, built-in ids and user components in config validation."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import pytest

from rl4lms.config.validation import ConfigError, validate_config
from rl4lms.registry import (ALL_REGISTRIES, AlgorithmRegistry, DataPoolRegistry, MetricRegistry, PolicyRegistry,
                             Registry, RegistryError, RewardFunctionRegistry, load_builtin_components)
from rl4lms.rewards.base import BatchedRewardFunction


class _Alpha:
    def __init__(self, x: int = 1, y: str = "y") -> None:
        self.x = x
        self.y = y


class _Beta:
    pass


def test_register_get_build() -> None:
    registry: Registry = Registry("widget")
    returned = registry.register("alpha", _Alpha)
    assert returned is _Alpha
    assert registry.get("alpha") is _Alpha
    assert "alpha" in registry and "beta" not in registry
    built = registry.build("alpha", {"x": 7})
    assert isinstance(built, _Alpha)
    assert (built.x, built.y) == (7, "y")
    default = registry.build("alpha")  # no args -> constructor defaults
    assert (default.x, default.y) == (1, "y")
    assert registry.ids() == ["alpha"]
    assert registry.add("alpha_again", _Alpha) is _Alpha  # RL4LMs' registration call
    assert registry.get("alpha_again") is _Alpha


def test_decorator_form_registers_and_returns_class() -> None:
    registry: Registry = Registry("widget")

    @registry.register("decorated")
    class Decorated:
        def __init__(self, value: int = 3) -> None:
            self.value = value

    # The decorator hands back the class itself, not a wrapper.
    assert isinstance(Decorated, type)
    assert registry.get("decorated") is Decorated
    assert registry.build("decorated", {"value": 5}).value == 5


def test_ids_are_sorted() -> None:
    registry: Registry = Registry("widget")
    for name in ("zeta", "alpha", "mu"):
        registry.register(name, type(name, (), {}))
    assert registry.ids() == ["alpha", "mu", "zeta"]


def test_duplicate_id_raises_and_overwrite_replaces() -> None:
    registry: Registry = Registry("widget")
    registry.register("thing", _Alpha)
    with pytest.raises(RegistryError) as excinfo:
        registry.register("thing", _Beta)
    message = str(excinfo.value)
    assert "'thing'" in message
    assert "already registered" in message
    assert "_Alpha" in message
    assert "overwrite=True" in message
    assert registry.get("thing") is _Alpha  # unchanged after the failed attempt

    registry.register("thing", _Beta, overwrite=True)
    assert registry.get("thing") is _Beta


def test_re_registering_same_class_is_allowed() -> None:
    registry: Registry = Registry("widget")
    registry.register("thing", _Alpha)
    registry.register("thing", _Alpha)  # idempotent: e.g. a module imported twice
    assert registry.get("thing") is _Alpha


def test_decorator_duplicate_raises() -> None:
    registry: Registry = Registry("widget")
    registry.register("thing", _Alpha)
    with pytest.raises(RegistryError):
        @registry.register("thing")
        class Other:  # noqa: F841
            pass


@pytest.mark.parametrize("bad_id", ["", None, 3])
def test_invalid_ids_rejected(bad_id: Any) -> None:
    registry: Registry = Registry("widget")
    with pytest.raises(RegistryError, match="non-empty strings"):
        registry.register(bad_id, _Alpha)


def test_registry_error_is_key_error_without_quotes() -> None:
    registry: Registry = Registry("widget")
    registry.register("alpha", _Alpha)
    with pytest.raises(KeyError) as excinfo:
        registry.get("nope")
    # KeyError normally wraps its message in quotes; RegistryError prints it plainly.
    assert str(excinfo.value).startswith("unknown widget id 'nope'.")


def test_unknown_id_lists_choices_and_suggests_close_match() -> None:
    registry: Registry = Registry("widget")
    registry.register("increasing_numbers", _Alpha)
    registry.register("dates", _Beta)
    with pytest.raises(RegistryError) as excinfo:
        registry.get("increasing_number")
    message = str(excinfo.value)
    assert "unknown widget id 'increasing_number'" in message
    assert "Did you mean 'increasing_numbers'?" in message
    assert "Valid choices: dates, increasing_numbers" in message

    with pytest.raises(RegistryError) as excinfo:
        registry.build("qqqqqqqq")
    message = str(excinfo.value)
    assert "Did you mean" not in message  # nothing is close
    assert "Valid choices: dates, increasing_numbers" in message


def test_unhashable_id_gives_registry_error() -> None:
    registry: Registry = Registry("widget")
    registry.register("alpha", _Alpha)
    with pytest.raises(RegistryError, match="Valid choices: alpha"):
        registry.get(["alpha"])  # type: ignore[arg-type]


def test_builtin_components_registered() -> None:
    load_builtin_components()
    expected = {
        "datapool": {"dummy_pool", "increasing_numbers", "dates"},
        "reward_fn": {"increasing_numbers", "sentences_with_dates"},
        "metric": {"increasing_numbers", "dates"},
        "alg": {"ppo"},
        "policy": {"causal_lm_actor_critic_policy", "seq2seq_lm_actor_critic_policy"},
    }
    assert set(ALL_REGISTRIES) == set(expected)
    for kind, ids in expected.items():
        assert ids <= set(ALL_REGISTRIES[kind].ids()), kind
    assert ALL_REGISTRIES["datapool"] is DataPoolRegistry
    assert ALL_REGISTRIES["reward_fn"] is RewardFunctionRegistry
    assert ALL_REGISTRIES["metric"] is MetricRegistry
    assert ALL_REGISTRIES["alg"] is AlgorithmRegistry
    assert ALL_REGISTRIES["policy"] is PolicyRegistry

    from rl4lms.algorithms.ppo import PPO
    from rl4lms.policies.causal import CausalLMActorCriticPolicy
    from rl4lms.policies.seq2seq import Seq2SeqLMActorCriticPolicy
    from rl4lms.rewards.synthetic import IncreasingNumbersReward

    assert AlgorithmRegistry.get("ppo") is PPO
    assert PolicyRegistry.get("causal_lm_actor_critic_policy") is CausalLMActorCriticPolicy
    assert PolicyRegistry.get("seq2seq_lm_actor_critic_policy") is Seq2SeqLMActorCriticPolicy
    assert RewardFunctionRegistry.get("increasing_numbers") is IncreasingNumbersReward


def test_load_builtin_components_is_idempotent() -> None:
    load_builtin_components()
    before = {kind: registry.ids() for kind, registry in ALL_REGISTRIES.items()}
    load_builtin_components()
    assert {kind: registry.ids() for kind, registry in ALL_REGISTRIES.items()} == before


BASE_CONFIG: Dict[str, Any] = {
    "tokenizer": {"model_name": "rl4lms/tiny-gpt2"},
    "reward_fn": {"id": "increasing_numbers", "args": {"min_tokens": 10}},
    "datapool": {"id": "increasing_numbers", "args": {"n_samples": 8}},
    "env": {"n_envs": 2, "args": {"max_prompt_length": 8, "max_episode_length": 10}},
    "alg": {"id": "ppo", "args": {"n_steps": 4}, "kl_div": {"coeff": 0.01},
            "policy": {"id": "causal_lm_actor_critic_policy", "args": {"model_name": "rl4lms/tiny-gpt2"}}},
    "train_evaluation": {"n_iters": 2},
}


@pytest.fixture
def user_reward_id() -> Any:
    reward_id = "test_registry_user_reward"

    class UserReward(BatchedRewardFunction):
        def __init__(self, bonus: float = 1.0, word: str = "yes") -> None:
            self.bonus = bonus
            self.word = word

        def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                     dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
            return [self.bonus if self.word in text else 0.0 for text in gen_texts]

    config = copy.deepcopy(BASE_CONFIG)
    config["reward_fn"] = {"id": reward_id, "args": {"bonus": 2.5}}
    # Before registering, the id is rejected.
    with pytest.raises(ConfigError, match=reward_id):
        validate_config(copy.deepcopy(config))
    RewardFunctionRegistry.register(reward_id, UserReward)
    yield reward_id, UserReward, config
    RewardFunctionRegistry._entries.pop(reward_id, None)


def test_user_registered_reward_accepted_by_validate_config(user_reward_id: Any) -> None:
    reward_id, cls, config = user_reward_id
    validated = validate_config(config)
    assert validated["reward_fn"] == {"id": reward_id, "args": {"bonus": 2.5}}
    reward = RewardFunctionRegistry.build(reward_id, validated["reward_fn"]["args"])
    assert isinstance(reward, cls)
    assert reward(["", ""], ["say yes", "no"], [[], []], [True, True]) == [2.5, 0.0]

    # Its arguments are checked against the user class's signature.
    config["reward_fn"]["args"] = {"bonus": 1.0, "wrd": "x"}
    with pytest.raises(ConfigError) as excinfo:
        validate_config(config)
    assert "reward_fn.args.wrd: unknown key (did you mean 'word'?)" in str(excinfo.value)
