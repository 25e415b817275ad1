"""Reading a YAML config file into a validated dict."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import yaml

from rl4lms.config.overrides import apply_overrides
from rl4lms.config.rl4lms_supervised import translate_rl4lms_supervised
from rl4lms.config.smoke import smoke_config
from rl4lms.config.validation import validate_config
from rl4lms.errors import ConfigError


def custom_module_paths(config_path: Optional[Path]) -> list:
    """Folders ``custom_modules`` are imported from besides the installed packages: the working
    folder and the config file's folder."""
    folders = [Path.cwd()]
    if config_path is not None:
        folders.append(config_path.resolve().parent)
    return [str(folder) for folder in folders]


def import_custom_modules(config: Dict[str, Any], config_path: Optional[Path] = None) -> None:
    """Import ``custom_modules`` so that their ``register`` calls run before validation.

    The working folder and the config's folder are appended to ``sys.path`` first, so a module
    next to the config or in the folder the command runs from is found without installing it.
    """
    modules = config.get("custom_modules", [])
    if not isinstance(modules, list):
        raise ConfigError(["custom_modules: expected a list of module names"])
    if modules:
        sys.path.extend(folder for folder in custom_module_paths(config_path) if folder not in sys.path)
    for ix, name in enumerate(modules):
        if not isinstance(name, str):
            raise ConfigError([f"custom_modules[{ix}]: expected a module name, got {type(name).__name__} ({name!r})"])
        try:
            importlib.import_module(name)
        except Exception as error:  # a user module may fail in any way while importing
            raise ConfigError([f"custom_modules[{ix}]: cannot import '{name}': {type(error).__name__}: {error}"]) from error


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def yaml_error_line(path: Path, error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: file, line, column and what is wrong (PyYAML's own message
    spans several lines and quotes the text)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return f"{path}: invalid YAML: {' '.join(str(error).split())}"
    line = f"{path}, {_position(mark)}: invalid YAML: {problem}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        line += f" ({context} started at {_position(context_mark)})"
    elif context:
        line += f" ({context})"
    return line


def read_yaml(path: Path) -> Any:
    """The YAML document of ``path``; a syntax error becomes a :class:`ConfigError` of one line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([yaml_error_line(path, error)]) from error


def load_config(path: Union[str, Path], overrides: Sequence[str] = (), smoke: bool = False) -> Dict[str, Any]:
    """Parse ``path``, translate RL4LMs' supervised form, shrink it to a smoke run if asked, apply
    dot-path ``overrides``, import custom modules, validate and fill in defaults. Overrides address
    the translated keys (``alg.args.batch_size``, not ``alg.training_args.per_device_train_batch_size``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file '{path}' does not exist"])
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    raw = translate_rl4lms_supervised(raw)
    if smoke:
        import_custom_modules(raw, path)  # the smoke rewrite looks up the config's (maybe custom) data pool
        raw = smoke_config(raw)
    raw = apply_overrides(raw, overrides)
    import_custom_modules(raw, path)
    return validate_config(raw, source=str(path))
