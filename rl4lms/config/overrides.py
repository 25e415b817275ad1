"""Dot-path overrides of config values (``--override alg.args.learning_rate=1e-5``)."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Sequence, Tuple, Union

import yaml

from rl4lms.config.schema import CONFIG_SCHEMA, Section
from rl4lms.errors import ConfigError

PathPart = Union[str, int]


def parse_override(text: str) -> Tuple[List[PathPart], Any]:
    """Split ``a.b.0.c=value`` into its path (list indices as ints) and YAML-typed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override '{text}': expected KEY.PATH=VALUE, e.g. alg.args.learning_rate=1e-5"])
    parts: List[PathPart] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    if any(p == "" for p in parts):
        raise ConfigError([f"override '{text}': empty component in the key path '{key}'"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError([f"override '{text}': the value is not valid YAML: {error}"]) from error
    return parts, value


def _describe(node: Any, spec: Any = None) -> str:
    if isinstance(node, dict):
        keys = list(map(str, node)) + [k for k in (spec.keys if isinstance(spec, Section) else {}) if k not in node]
        return "valid keys: " + (", ".join(keys) or "none")
    return f"valid indices: 0..{len(node) - 1}" if node else "the list is empty"


def set_path(config: Dict[str, Any], parts: Sequence[PathPart], value: Any, text: str) -> None:
    """Set ``value`` at ``parts`` in ``config``. Intermediate keys must exist, or be an optional
    section of the schema that the file leaves out (``accelerator``), which is then created; the
    last key may be new in a mapping (the schema check that follows catches misspellings)."""
    node: Any = config
    spec: Any = CONFIG_SCHEMA
    for depth, part in enumerate(parts):
        where = ".".join(map(str, parts[:depth])) or "<top level>"
        last = depth == len(parts) - 1
        child_spec = spec.keys.get(part) if isinstance(spec, Section) and isinstance(part, str) else None
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise ConfigError([f"override '{text}': '{part}' is not an index of the list at {where} "
                                   f"({_describe(node)})"])
        elif isinstance(node, dict):
            if not last and part not in node and not isinstance(child_spec, Section):
                raise ConfigError([f"override '{text}': no key '{part}' under {where} ({_describe(node, spec)})"])
        else:
            raise ConfigError([f"override '{text}': {where} is a {type(node).__name__}, not a mapping or list"])
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
            spec = child_spec


def apply_overrides(config: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """A copy of ``config`` with every ``KEY.PATH=VALUE`` override applied, in order."""
    result = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        set_path(result, parts, value, text)
    return result
