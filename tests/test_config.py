"""Config validation: defaults, one test per kind of error, ``load_config`` failures, bundled YAMLs."""
from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from conftest import training_configs
from rl4lms.config.loader import load_config
from rl4lms.config.validation import validate_config
from rl4lms.errors import ConfigError
from rl4lms.registry import RewardFunctionRegistry

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK_CONFIGS = REPO_ROOT / "task_configs"
BASE_YAML = TASK_CONFIGS / "synthetic_increasing_numbers" / "tiny_gpt2_ppo.yml"


@pytest.fixture
def config() -> Dict[str, Any]:
    """A fresh, valid config dict (the bundled tiny GPT-2 PPO config)."""
    return yaml.safe_load(BASE_YAML.read_text())


def _errors_of(config: Dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        validate_config(config)
    return excinfo.value


def test_base_yaml_is_valid_and_defaults_are_filled(config: Dict[str, Any]) -> None:
    original = copy.deepcopy(config)
    validated = validate_config(config)
    # The input dict is not mutated.
    assert config == original
    # Given values survive.
    assert validated["alg"]["args"]["learning_rate"] == 0.0005
    assert validated["env"]["n_envs"] == 32
    assert validated["train_evaluation"]["metrics"] == [{"id": "increasing_numbers", "args": {"min_tokens": 10}}]
    # Defaults of the schema are filled in.
    assert validated["tokenizer"]["pad_token_as_eos_token"] is True  # RL4LMs' default
    assert validated["env"]["args"]["prompt_truncation_side"] == "left"
    assert validated["env"]["args"]["context_start_token"] is None
    assert validated["env"]["args"]["terminate_on_eos"] is True
    assert validated["train_evaluation"]["save_checkpoints_to_keep"] == 2
    assert validated["custom_modules"] == []


def test_defaults_filled_for_minimal_config(config: Dict[str, Any]) -> None:
    del config["seed"]
    del config["env"]["n_envs"]
    del config["env"]["args"]["terminate_on_eos"]
    del config["tokenizer"]["padding_side"]
    del config["tokenizer"]["truncation_side"]
    del config["alg"]["kl_div"]["target_kl"]
    for key in ("eval_every", "save_every", "eval_batch_size", "metrics", "generation_kwargs"):
        del config["train_evaluation"][key]
    validated = validate_config(config)
    assert validated["seed"] == 0
    assert validated["env"]["n_envs"] == 1
    assert validated["env"]["args"]["terminate_on_eos"] is True
    assert validated["tokenizer"]["padding_side"] == "left"
    assert validated["tokenizer"]["truncation_side"] == "left"
    assert validated["alg"]["kl_div"]["target_kl"] is None
    te = validated["train_evaluation"]
    assert (te["eval_every"], te["save_every"], te["eval_batch_size"]) == (10, 10, 32)
    assert te["generation_kwargs"] == {}
    assert "metrics" not in te  # an optional component list is not invented


def test_default_mutable_values_are_not_shared(config: Dict[str, Any]) -> None:
    del config["train_evaluation"]["generation_kwargs"]
    first = validate_config(copy.deepcopy(config))
    first["train_evaluation"]["generation_kwargs"]["do_sample"] = True
    first["custom_modules"].append("x")
    second = validate_config(copy.deepcopy(config))
    assert second["train_evaluation"]["generation_kwargs"] == {}
    assert second["custom_modules"] == []


def test_unknown_top_level_key(config: Dict[str, Any]) -> None:
    config["frobnicate"] = 1
    error = _errors_of(config)
    assert len(error.errors) == 1
    assert error.errors[0].startswith("frobnicate: unknown key")
    assert "valid keys: tokenizer, reward_fn, datapool, env, alg, train_evaluation, accelerator, seed, custom_modules" in str(error)


def test_misspelled_key_suggests_correct_one(config: Dict[str, Any]) -> None:
    config["env"]["args"]["max_episode_lenght"] = config["env"]["args"].pop("max_episode_length")
    error = _errors_of(config)
    messages = "\n".join(error.errors)
    assert "env.args.max_episode_lenght: unknown key (did you mean 'max_episode_length'?)" in messages
    # ... and, since the real key is now absent, it is reported as missing too.
    assert "env.args.max_episode_length: required key is missing" in messages


def test_wrong_type(config: Dict[str, Any]) -> None:
    config["env"]["args"]["max_episode_length"] = "ten"
    error = _errors_of(config)
    assert error.errors == ["env.args.max_episode_length: expected int, got str ('ten')"]


def test_bool_is_not_an_int(config: Dict[str, Any]) -> None:
    config["seed"] = True
    error = _errors_of(config)
    assert error.errors == ["seed: expected int, got bool (True)"]


def test_missing_required_key(config: Dict[str, Any]) -> None:
    del config["train_evaluation"]["n_iters"]
    error = _errors_of(config)
    assert error.errors == ["train_evaluation.n_iters: required key is missing"]


def test_missing_required_section(config: Dict[str, Any]) -> None:
    del config["alg"]["kl_div"]
    error = _errors_of(config)
    assert error.errors == ["alg.kl_div: required key is missing (alg 'ppo' penalises the KL in the reward; "
                            "only 'supervised' and the critic-free algorithms run without it)"]
    config["alg"]["id"] = "grpo"  # critic-free: the KL may be beta's term in the loss instead
    config["alg"]["args"] = {"num_generations": 4, "batch_size": 16}
    validate_config(config)


def test_unknown_registry_id_lists_choices(config: Dict[str, Any]) -> None:
    config["reward_fn"]["id"] = "increasing_numberz"
    error = _errors_of(config)
    assert len(error.errors) == 1
    message = error.errors[0]
    assert message.startswith("reward_fn.id: unknown reward_fn id 'increasing_numberz'.")
    assert "Did you mean 'increasing_numbers'?" in message
    assert "Valid choices:" in message
    assert "increasing_numbers" in message and "sentences_with_dates" in message


def test_unknown_policy_id_in_nested_component(config: Dict[str, Any]) -> None:
    config["alg"]["policy"]["id"] = "causal_policy"
    error = _errors_of(config)
    assert len(error.errors) == 1
    assert error.errors[0].startswith("alg.policy.id: unknown policy id 'causal_policy'")
    assert "causal_lm_actor_critic_policy" in error.errors[0]
    assert "seq2seq_lm_actor_critic_policy" in error.errors[0]


def test_unknown_metric_in_list_names_index(config: Dict[str, Any]) -> None:
    config["train_evaluation"]["metrics"].append({"id": "bleu_score"})
    error = _errors_of(config)
    assert len(error.errors) == 1
    assert error.errors[0].startswith("train_evaluation.metrics[1].id: unknown metric id 'bleu_score'")


def test_unknown_component_arg(config: Dict[str, Any]) -> None:
    config["datapool"]["args"]["n_sample"] = 5
    error = _errors_of(config)
    assert len(error.errors) == 1
    assert error.errors[0].startswith("datapool.args.n_sample: unknown key (did you mean 'n_samples'?)")
    # The valid keys are the pool's prepare() arguments minus the injected 'split'.
    assert "valid keys: n_samples, prompt_numbers, reference_numbers, seed" in error.errors[0]


@pytest.mark.parametrize("section, name, value", [("alg", "seed", 3), ("datapool", "split", "train")])
def test_injected_arg_rejected(config: Dict[str, Any], section: str, name: str, value: Any) -> None:
    config[section]["args"][name] = value
    error = _errors_of(config)
    assert error.errors == [f"{section}.args.{name}: is set by the trainer and may not be given in the config"]


def test_missing_required_component_arg(config: Dict[str, Any]) -> None:
    del config["alg"]["policy"]["args"]["model_name"]
    error = _errors_of(config)
    assert error.errors == ["alg.policy.args.model_name: required argument of CausalLMActorCriticPolicy is missing"]


def test_wrong_type_for_component_arg(config: Dict[str, Any]) -> None:
    config["alg"]["args"]["n_steps"] = "many"
    error = _errors_of(config)
    assert error.errors == ["alg.args.n_steps: expected int, got str ('many')"]


@pytest.mark.parametrize("path, value, expected", [
    (("env", "n_envs"), 0, "env.n_envs: must be >= 1, got 0"),
    (("train_evaluation", "n_iters"), -3, "train_evaluation.n_iters: must be >= 1, got -3"),
    (("alg", "kl_div", "coeff"), -0.5, "alg.kl_div.coeff: must be >= 0.0, got -0.5"),
])
def test_value_below_minimum(config: Dict[str, Any], path: tuple, value: Any, expected: str) -> None:
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    error = _errors_of(config)
    assert error.errors == [expected]


def test_nan_is_rejected_by_minimum(config: Dict[str, Any]) -> None:
    config["alg"]["kl_div"]["coeff"] = float("nan")
    error = _errors_of(config)
    assert [e.split(":", 1)[0] for e in error.errors] == ["alg.kl_div.coeff"]


def test_value_not_in_choices(config: Dict[str, Any]) -> None:
    config["tokenizer"]["padding_side"] = "middle"
    error = _errors_of(config)
    assert error.errors == ["tokenizer.padding_side: 'middle' is not one of 'left', 'right'"]


def test_scientific_notation_string_coerced_to_float(config: Dict[str, Any]) -> None:
    # PyYAML (YAML 1.1) reads 1e-5 without a dot as a string.
    assert yaml.safe_load("lr: 1e-5") == {"lr": "1e-5"}
    config["alg"]["args"]["learning_rate"] = "1e-5"
    config["alg"]["kl_div"]["coeff"] = "2e-3"
    validated = validate_config(config)
    learning_rate = validated["alg"]["args"]["learning_rate"]
    assert isinstance(learning_rate, float) and learning_rate == 0.00001
    coeff = validated["alg"]["kl_div"]["coeff"]
    assert isinstance(coeff, float) and coeff == 0.002


def test_non_numeric_string_for_float_is_an_error(config: Dict[str, Any]) -> None:
    config["alg"]["args"]["learning_rate"] = "fast"
    error = _errors_of(config)
    assert len(error.errors) == 1
    assert error.errors[0].startswith("alg.args.learning_rate: expected float, got str ('fast')")


def test_all_errors_reported_together(config: Dict[str, Any]) -> None:
    config["frobnicate"] = 1
    config["env"]["args"]["max_episode_length"] = "ten"
    del config["train_evaluation"]["n_iters"]
    config["datapool"]["args"]["n_sample"] = 5
    config["alg"]["args"]["seed"] = 1
    error = _errors_of(config)
    paths = sorted(message.split(":", 1)[0] for message in error.errors)
    assert paths == sorted(["frobnicate", "env.args.max_episode_length", "train_evaluation.n_iters",
                            "datapool.args.n_sample", "alg.args.seed"])
    text = str(error)
    assert text.startswith("invalid config:\n")
    for message in error.errors:
        assert f"  - {message}" in text


def test_error_names_source(config: Dict[str, Any]) -> None:
    config["seed"] = "x"
    with pytest.raises(ConfigError) as excinfo:
        validate_config(config, source="my.yml")
    assert str(excinfo.value).startswith("invalid config in my.yml: seed: expected int")  # one error: one line


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- load_config -------------------------------------------------------------------------------

def test_load_config_reads_and_validates(tmp_path: Path, config: Dict[str, Any]) -> None:
    config["alg"]["args"]["learning_rate"] = "3e-4"
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    assert loaded["alg"]["args"]["learning_rate"] == 0.0003
    assert loaded["env"]["args"]["prompt_truncation_side"] == "left"


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)
    assert "does not exist" in str(excinfo.value)


def test_load_config_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path)


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("tokenizer:\n  model_name: [unclosed\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert "invalid YAML" in str(excinfo.value)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("text, where, what", [
    ("alg:\n  id: ppo\n   x: 1\n", "line 3, column 5", "mapping values are not allowed here"),
    ("alg:\n  args: {a: 1\nfoo: [1, 2\n", "line 3, column 4",
     "expected ',' or '}', but got ':' (while parsing a flow mapping started at line 2, column 9)"),
    ("alg:\n\t- 1\n", "line 2, column 1", "found character '\\t' that cannot start any token (while scanning for the next token)"),
])
def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path: Path, text: str, where: str,
                                                               what: str) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == f"invalid config: {path}, {where}: invalid YAML: {what}"


def test_load_config_top_level_list(tmp_path: Path) -> None:
    path = tmp_path / "list.yml"
    path.write_text("- tokenizer\n- env\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_load_config_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_load_config_custom_module_missing(tmp_path: Path, config: Dict[str, Any]) -> None:
    config["custom_modules"] = ["rl4lms_no_such_module_xyz"]
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert "custom_modules[0]: cannot import 'rl4lms_no_such_module_xyz'" in str(excinfo.value)


def test_load_config_custom_modules_not_a_list(tmp_path: Path, config: Dict[str, Any]) -> None:
    config["custom_modules"] = "my_module"
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="custom_modules: expected a list"):
        load_config(path)


def test_load_config_custom_module_registers_reward(tmp_path: Path, config: Dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    module_name = "rl4lms_test_custom_reward_mod"
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent("""
        from rl4lms.registry import RewardFunctionRegistry
        from rl4lms.rewards.base import BatchedRewardFunction

        @RewardFunctionRegistry.register("custom_module_reward")
        class CustomReward(BatchedRewardFunction):
            def __init__(self, scale: float = 1.0):
                self.scale = scale

            def __call__(self, prompt_texts, gen_texts, ref_texts, dones, meta_infos=None):
                return [self.scale * len(t) for t in gen_texts]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config["custom_modules"] = [module_name]
    config["reward_fn"] = {"id": "custom_module_reward", "args": {"scale": "5e-1"}}
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    try:
        loaded = load_config(path)
        assert loaded["reward_fn"] == {"id": "custom_module_reward", "args": {"scale": 0.5}}
        assert loaded["custom_modules"] == [module_name]
    finally:
        RewardFunctionRegistry._entries.pop("custom_module_reward", None)
        sys.modules.pop(module_name, None)


def test_load_config_error_names_file(tmp_path: Path, config: Dict[str, Any]) -> None:
    config["seed"] = "zero"
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value).startswith(f"invalid config in {path}:")
    assert excinfo.value.errors == ["seed: expected int, got str ('zero')"]


BUNDLED = training_configs()


def test_bundled_configs_exist() -> None:
    assert BUNDLED, f"no YAML configs found under {TASK_CONFIGS}"


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: str(p.relative_to(TASK_CONFIGS)))
def test_bundled_config_validates(path: Path) -> None:
    try:
        loaded = load_config(path)
    except ConfigError as error:
        # What may be missing on a test machine is only what a component needs outside Python
        # (SPICE's Java and CoreNLP), and the error says how to install it.
        assert error.errors and all("SPICE needs Java and Stanford CoreNLP" in e for e in error.errors), error.errors
        return
    assert {"tokenizer", "datapool", "env", "alg", "train_evaluation"} <= set(loaded)
    assert ("reward_fn" in loaded) == (loaded["alg"]["id"] != "supervised")


def test_custom_module_that_fails_at_import_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rl4lms_broken_plugin.py").write_text("raise RuntimeError('plugin exploded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"custom_modules": ["rl4lms_broken_plugin", 3]}))
    with pytest.raises(ConfigError, match=r"custom_modules\[0\]: cannot import 'rl4lms_broken_plugin': "
                                          r"RuntimeError: plugin exploded"):
        load_config(path)
    path.write_text(yaml.safe_dump({"custom_modules": [3]}))
    with pytest.raises(ConfigError, match=r"custom_modules\[0\]: expected a module name, got int"):
        load_config(path)
