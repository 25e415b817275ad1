"""Registry: register / get / build, errors, built-in ids and user components in config validation."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from conftest import DEFAULT_CONFIG, REPO
from rl4lms.config.validation import validate_config
from rl4lms.errors import ConfigError, RegistryError
from rl4lms.registry import (ALL_REGISTRIES, AlgorithmRegistry, DataPoolRegistry, MetricRegistry, PolicyRegistry,
                             Registry, RewardFunctionRegistry)
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


@pytest.mark.parametrize("kind", sorted(ALL_REGISTRIES))
def test_every_builtin_entry_point_loads_the_class_it_names(kind: str) -> None:
    registry = ALL_REGISTRIES[kind]
    for component_id in registry.ids():
        entry = registry.entry_point(component_id)
        cls = registry.get(component_id)
        assert isinstance(cls, type), component_id
        assert f"{cls.__module__}:{cls.__qualname__}" == entry
        assert registry.get(component_id) is cls  # loaded once, then kept


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter with this checkout on the path; return its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_registry_module_imports_no_component_module() -> None:
    loaded = json.loads(_python(
        "import json, sys\nimport rl4lms.registry as r\n"
        "ids = {kind: reg.ids() for kind, reg in r.ALL_REGISTRIES.items()}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('rl4lms', 'torch')))))"))
    assert loaded == ["rl4lms", "rl4lms.errors", "rl4lms.registry"]  # errors imports nothing of the project


@pytest.mark.slow
def test_validating_a_config_imports_only_the_components_it_names() -> None:
    loaded = set(json.loads(_python(
        "import json, sys\nfrom rl4lms.config import load_config\n"
        f"load_config({str(DEFAULT_CONFIG)!r})\n"
        "print(json.dumps(sorted(sys.modules)))")))
    named = {"rl4lms.algorithms.ppo", "rl4lms.policies.causal", "rl4lms.data_pools.synthetic",
             "rl4lms.rewards.synthetic", "rl4lms.metrics.synthetic"}
    assert named <= loaded
    others = {"rl4lms.algorithms.a2c", "rl4lms.algorithms.nlpo", "rl4lms.algorithms.trpo",
              "rl4lms.algorithms.supervised", "rl4lms.policies.seq2seq", "rl4lms.policies.maskable",
              "rl4lms.metrics.lexical", "rl4lms.metrics.semantic", "rl4lms.rewards.scored", "rl4lms.data_pools.imdb"}
    assert not others & loaded
    # Nor the heavy libraries only training needs: transformers' model code, NLTK, datasets.
    assert not {"transformers.modeling_utils", "nltk", "datasets"} & loaded


def test_entry_point_is_imported_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_widgets.py").write_text("class Widget:\n    def __init__(self, size: int = 2) -> None:\n"
                                             "        self.size = size\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("widget", {"widget": "lazy_widgets:Widget"})
    assert "widget" in registry and registry.ids() == ["widget"]
    assert "lazy_widgets" not in sys.modules
    assert registry.build("widget", {"size": 5}).size == 5
    assert registry.get("widget") is sys.modules["lazy_widgets"].Widget
    # The module registering its own class under the id it already has is no conflict.
    registry.register("widget", sys.modules["lazy_widgets"].Widget)
    registry.register("widget", "lazy_widgets:Widget")
    assert registry.get("widget") is sys.modules["lazy_widgets"].Widget
    with pytest.raises(RegistryError, match="already registered to lazy_widgets.Widget"):
        registry.register("widget", "lazy_widgets:Other")
    monkeypatch.delitem(sys.modules, "lazy_widgets")


def test_entry_point_that_cannot_be_loaded_names_it() -> None:
    registry: Registry = Registry("widget", {"broken": "no_such_module_here:Widget"})
    with pytest.raises(RegistryError) as excinfo:
        registry.get("broken")
    assert str(excinfo.value).startswith("widget id 'broken': cannot load its entry point 'no_such_module_here:Widget'")
    with pytest.raises(RegistryError, match="not of the form 'module:Class'"):
        registry.register("bad", "no_colon")


def _install_fake_package(folder: Path, entry_points: str) -> None:
    """A distribution on ``folder`` (a dist-info with ``entry_points.txt``) and the module it points to."""
    info = folder / "rl4lms_plugin_fake-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rl4lms-plugin-fake\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[rl4lms.components]\n{entry_points}")
    (folder / "rl4lms_plugin_fake.py").write_text(
        "from rl4lms.rewards.base import BatchedRewardFunction\n\n"
        "class PluginReward(BatchedRewardFunction):\n"
        "    def __init__(self, value: float = 1.0) -> None:\n        self.value = value\n\n"
        "    def __call__(self, prompt_texts, gen_texts, ref_texts, dones, meta_infos=None):\n"
        "        return [self.value] * len(gen_texts)\n")


def test_installed_packages_register_through_the_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import rl4lms.registry as registry_module

    _install_fake_package(tmp_path, "reward_fn.plugin_reward = rl4lms_plugin_fake:PluginReward\n"
                                    "reward_fn.increasing_numbers = rl4lms_plugin_fake:PluginReward\n"
                                    "no_kind = rl4lms_plugin_fake:PluginReward\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_installed_packages_registered", False)
    monkeypatch.setattr(RewardFunctionRegistry, "_entries", dict(RewardFunctionRegistry._entries))
    assert "plugin_reward" in RewardFunctionRegistry.ids()
    assert "rl4lms_plugin_fake" not in sys.modules  # registered, not imported
    # A taken id and a name without a kind are skipped with a warning; the built-in stays.
    assert RewardFunctionRegistry.entry_point("increasing_numbers") == \
        "rl4lms.rewards.synthetic:IncreasingNumbersReward"
    warnings = [r.getMessage() for r in caplog.records]
    assert any("reward_fn.increasing_numbers" in w and "already registered" in w for w in warnings)
    assert any("'no_kind = " in w and "<kind>.<id>" in w for w in warnings)

    config = copy.deepcopy(BASE_CONFIG)
    config["reward_fn"] = {"id": "plugin_reward", "args": {"value": 0.5}}
    validated = validate_config(config)
    assert RewardFunctionRegistry.build("plugin_reward", validated["reward_fn"]["args"])([""], ["x"], [[]], [True]) == [0.5]
    monkeypatch.delitem(sys.modules, "rl4lms_plugin_fake")


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
