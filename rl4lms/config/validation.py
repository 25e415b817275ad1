"""Up-front config validation: every error names its key path and the valid choices."""
from __future__ import annotations

import collections.abc
import copy
import difflib
import inspect
import logging
import math
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from rl4lms.config.schema import CONFIG_SCHEMA, INJECTED_ARGS, POSITIVE_ARGS, Component, ComponentList, Key, Section
from rl4lms.errors import ConfigError, RegistryError
from rl4lms.registry import ALL_REGISTRIES

logger = logging.getLogger(__name__)


def _type_names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _coerce_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string; accept numeric strings where a float is expected."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce_stray_comma_bool(value: Any, path: str) -> Any:
    """``apply_best: True,`` (a flow-style comma left in block YAML, as in RL4LMs' NarrativeQA
    configs) is the string ``"True,"``; read it as the boolean it was meant to be, and say so."""
    if isinstance(value, str) and value.endswith(",") and value.rstrip(", ").lower() in ("true", "false"):
        logger.warning("%s: read %r as %s (a stray comma after a YAML boolean)", path, value,
                       value.rstrip(", ").lower())
        return value.rstrip(", ").lower() == "true"
    return value


def _is_instance(value: Any, types: tuple) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _hint_accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a (simple) type hint; unknown kinds of hints accept anything."""
    origin = typing.get_origin(hint)
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    if origin is typing.Union:
        return any(_hint_accepts(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return _is_instance(value, (float, int))
    if hint in (int, bool, str):
        return _is_instance(value, (hint,))
    if hint is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if hint is list or origin in (list, collections.abc.Sequence):
        return isinstance(value, list)
    return True


def _takes_float_not_str(hint: Any) -> bool:
    """Whether a numeric string given for this hint should be read as a float."""
    return _hint_accepts(1.5, hint) and not _hint_accepts("text", hint)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _resolved_hints(target: Callable) -> Dict[str, Any]:
    """The type hints of ``target``'s parameters. Where the annotations cannot all be resolved (a
    name imported for type checkers only, so that validation need not import heavy modules), each
    is resolved on its own and those that fail are left out: their values are not type-checked."""
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    hints = {}
    for name, annotation in getattr(target, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # what typing.get_type_hints does, one at a time
            except Exception:
                continue
        hints[name] = annotation
    return hints


def _built_algorithm_class(cls: type) -> type:
    """The class the trainer builds for ``alg.id``: an RL4LMs-style stable-baselines3 subclass runs
    inside its adapter, which takes what the subclass passes on with ``**args``."""
    from rl4lms.algorithms.sb3_compat import is_sb3_algorithm, text_algorithm

    return text_algorithm(cls) if is_sb3_algorithm(cls) else cls


def _constructor_parameters(cls: type, kind: str) -> Tuple[Dict[str, inspect.Parameter], Dict[str, Any], bool]:
    """Named parameters (with type hints) of the constructor, ``prepare`` for pools.

    A constructor that forwards ``**kwargs`` to its parent (e.g. a mixin adding a few
    arguments) also accepts the parent's parameters; only when no class in the MRO names them
    does the component accept any keyword.
    """
    params: Dict[str, inspect.Parameter] = {}
    hints: Dict[str, Any] = {}
    if kind == "alg":
        cls = _built_algorithm_class(cls)
    owners = [cls] if kind == "datapool" else [c for c in cls.__mro__ if "__init__" in vars(c)]
    for owner in owners:
        target: Callable = owner.prepare if kind == "datapool" else vars(owner)["__init__"]
        signature = inspect.signature(target)
        owner_hints = _resolved_hints(target)
        for name, param in signature.parameters.items():
            if name not in ("self", "cls") and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                params.setdefault(name, param)
                if name in owner_hints:
                    hints.setdefault(name, owner_hints[name])
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return params, hints, False
    return params, hints, True


def requirement_errors(cls: type, args: Dict[str, Any]) -> List[str]:
    """What a component needs outside Python (Java, data files) and cannot find, from its optional
    ``requirement_errors(**args)`` hook."""
    check = getattr(cls, "requirement_errors", None)
    return list(check(**args)) if callable(check) else []


class _Validator:
    def __init__(self) -> None:
        self.errors: List[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def unknown_keys(self, path: str, given: Dict[str, Any], valid: List[str]) -> None:
        for key in given:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.error(f"{path}{key}", f"unknown key{hint}; valid keys: {', '.join(valid)}")

    def section(self, spec: Section, value: Any, path: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            self.error(path.rstrip(".") or "<top level>", f"expected a mapping, got {type(value).__name__}")
            return {}
        self.unknown_keys(path, value, list(spec.keys))
        out = dict(value)
        for key, child in spec.keys.items():
            child_path = f"{path}{key}"
            if key not in value:
                if isinstance(child, Key) and not child.required:
                    out[key] = copy.deepcopy(child.default)
                elif isinstance(child, ComponentList) or (isinstance(child, (Section, Component)) and not child.required):
                    continue
                else:
                    self.error(child_path, "required key is missing")
                continue
            out[key] = self.node(child, value[key], child_path)
        return out

    def node(self, spec: Any, value: Any, path: str) -> Any:
        if isinstance(spec, Key):
            return self.key(spec, value, path)
        if isinstance(spec, Section):
            return self.section(spec, value, path + ".")
        if isinstance(spec, Component):
            return self.component(spec, value, path)
        if not isinstance(value, list):
            self.error(path, f"expected a list of {{id, args}} entries, got {type(value).__name__}")
            return value
        return [self.component(Component(spec.registry), item, f"{path}[{ix}]") for ix, item in enumerate(value)]

    def key(self, spec: Key, value: Any, path: str) -> Any:
        if float in spec.types:
            value = _coerce_float(value)
        if not _is_instance(value, spec.types):
            self.error(path, f"expected {_type_names(spec.types)}, got {type(value).__name__} ({value!r})")
        elif spec.choices is not None and value not in spec.choices:
            self.error(path, f"{value!r} is not one of {', '.join(map(repr, spec.choices))}")
        elif isinstance(value, float) and math.isnan(value):
            self.error(path, "must be a number, got NaN")
        elif spec.minimum is not None and value is not None and value < spec.minimum:
            self.error(path, f"must be >= {spec.minimum}, got {value}")
        return value

    def component(self, spec: Component, value: Any, path: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping with 'id' and 'args', got {type(value).__name__}")
            return {}
        self.unknown_keys(path + ".", value, ["id", "args", *spec.extra_keys])
        out = dict(value)
        registry = ALL_REGISTRIES[spec.registry]
        if "id" not in value:
            self.error(f"{path}.id", f"required key is missing; valid choices: {', '.join(registry.ids())}")
            return out
        args = value.get("args") or {}
        if not isinstance(args, dict):
            self.error(f"{path}.args", f"expected a mapping, got {type(args).__name__}")
            args = {}
        try:
            cls = registry.get(value["id"])
        except RegistryError as error:
            self.error(f"{path}.id", str(error))
        else:
            args = self.arguments(cls, spec.registry, args, f"{path}.args")
            for problem in requirement_errors(cls, args):
                self.error(f"{path}.id", problem)
        out["args"] = args
        for key, child in spec.extra_keys.items():
            if key in value:
                out[key] = self.node(child, value[key], f"{path}.{key}")
            elif child.required:
                self.error(f"{path}.{key}", "required key is missing")
        return out

    def arguments(self, cls: type, kind: str, args: Dict[str, Any], path: str) -> Dict[str, Any]:
        """Check ``args`` against the signature of the class's constructor (``prepare`` for pools)."""
        params, hints, accepts_any = _constructor_parameters(cls, kind)
        injected = INJECTED_ARGS[kind]
        allowed = [name for name in params if name not in injected]
        out = dict(args)
        for name, arg in args.items():
            if name in injected:
                self.error(f"{path}.{name}", "is set by the trainer and may not be given in the config")
            elif name not in params:
                if not accepts_any:
                    self.unknown_keys(path + ".", {name: arg}, allowed)
            else:
                hint = hints.get(name, inspect.Parameter.empty)
                value = _coerce_float(arg) if _takes_float_not_str(hint) else arg
                if _hint_accepts(True, hint) and not _hint_accepts("text", hint):
                    value = _coerce_stray_comma_bool(value, f"{path}.{name}")
                if not _hint_accepts(value, hint):
                    self.error(f"{path}.{name}", f"expected {_hint_name(hint)}, got {type(arg).__name__} ({arg!r})")
                elif isinstance(value, float) and math.isnan(value):
                    self.error(f"{path}.{name}", "must be a number, got NaN")
                elif name in POSITIVE_ARGS[kind] and isinstance(value, (int, float)) and value <= 0:
                    self.error(f"{path}.{name}", f"must be > 0, got {value}")
                out[name] = value
        for name, param in params.items():
            if param.default is param.empty and name not in injected and name not in args:
                self.error(f"{path}.{name}", f"required argument of {cls.__name__} is missing")
        return out


def _check_reward_sections(validator: _Validator, config: Dict[str, Any]) -> None:
    """``reward_fn`` is optional only for algorithms that learn without rewards; ``alg.kl_div`` also
    for the critic-free ones, whose KL may sit in the loss (``alg.args.beta``) instead."""
    alg = config.get("alg")
    try:
        alg_class = ALL_REGISTRIES["alg"].get(alg["id"]) if isinstance(alg, dict) and "id" in alg else None
    except RegistryError:
        return  # already reported
    if alg_class is None or not getattr(alg_class, "needs_reward_function", True):
        return
    if "reward_fn" not in config:
        validator.error("reward_fn", f"required key is missing (alg '{alg['id']}' learns from rewards; "
                                     "only 'supervised' runs without it)")
    if "kl_div" not in alg and getattr(alg_class, "needs_kl_div", True):
        validator.error("alg.kl_div", f"required key is missing (alg '{alg['id']}' penalises the KL in the reward; "
                                      "only 'supervised' and the critic-free algorithms run without it)")


def _check_accelerator_section(validator: _Validator, config: Dict[str, Any]) -> None:
    """``accelerator.fsdp`` only with ``sharding: fsdp``, which casts with its own mixed precision (no fp16)."""
    accelerator = config.get("accelerator")
    if not isinstance(accelerator, dict):
        return
    sharded = accelerator.get("sharding") == "fsdp"
    if "fsdp" in accelerator and not sharded:
        validator.error("accelerator.fsdp", "these options need accelerator.sharding: fsdp")
    if sharded and accelerator.get("mixed_precision") == "fp16":
        validator.error("accelerator.mixed_precision", "fp16 is not supported with accelerator.sharding: fsdp; "
                                                       "use bf16")


def _check_chat_template(validator: _Validator, config: Dict[str, Any]) -> None:
    """``env.args.chat_template`` needs a tokenizer with a chat template, told without loading it where
    its files are at hand (tiny models have none; a local folder's tokenizer config says); a hub
    tokenizer is checked when it loads."""
    env_args = (config.get("env") or {}).get("args") or {}
    tokenizer = config.get("tokenizer") or {}
    if env_args.get("system_prompt") is not None and not env_args.get("chat_template"):
        validator.error("env.args.system_prompt", "needs env.args.chat_template: true")
    name = tokenizer.get("model_name")
    if not env_args.get("chat_template") or not isinstance(name, str) or tokenizer.get("gguf_file"):
        return
    from rl4lms.models.chat_template import folder_has_chat_template
    from rl4lms.models.tiny import TINY_MODELS

    has_template = False if name in TINY_MODELS else (
        folder_has_chat_template(Path(name).expanduser()) if Path(name).expanduser().is_dir() else None)
    if has_template is False:
        validator.error("env.args.chat_template", f"tokenizer '{name}' has no chat template: set it false, or use "
                                                  "an instruct model's tokenizer (e.g. rl4lms/smollm2-135m-instruct)")


def validate_config(config: Dict[str, Any], source: Optional[str] = None) -> Dict[str, Any]:
    """Validate a config dict against the schema and component signatures; return it with defaults."""
    validator = _Validator()
    result = validator.section(CONFIG_SCHEMA, config, "")
    _check_reward_sections(validator, result)
    _check_accelerator_section(validator, result)
    _check_chat_template(validator, result)
    if validator.errors:
        raise ConfigError(validator.errors, source)
    return result
