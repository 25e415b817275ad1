"""Expanding a sweep file (base configs x variants x a grid of dot-path overrides) into named runs."""
from __future__ import annotations

import fnmatch
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from rl4lms.config import load_config
from rl4lms.config.loader import read_yaml
from rl4lms.errors import ConfigError

SWEEP_KEYS = ("name", "configs", "variants", "grid", "overrides", "smoke", "resources", "base_path_to_store_results")
RESOURCE_KEYS = ("num_cpus", "num_gpus")
VARIANT_CONFIGS_KEY = "configs"  # in a variant: the config file names (glob patterns) it applies to


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a base config, the overrides applied to it, and its folder name.

    :param smoke: train the config's ``--smoke`` form (tiny model, shipped fixture)
    """

    name: str
    config_path: Path
    overrides: Tuple[str, ...]
    grid_point: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    smoke: bool = False


@dataclass(frozen=True)
class RunResources:
    """What one run needs (the sweep file's ``resources``): the Ray executor reserves it per run,
    and both executors give the run ``num_cpus`` threads.

    :param num_cpus: CPU cores, also the run's torch/OpenMP threads (None: the executor's default)
    :param num_gpus: GPUs (may be a fraction on Ray); 0 for CPU-only runs
    """

    num_cpus: Optional[int] = None
    num_gpus: float = 0


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str
    runs: List[RunSpec]
    base_path: Path
    resources: RunResources = field(default_factory=RunResources)


def _format_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text).strip("-")


def run_name(config_path: Path, grid_point: Dict[str, Any], variant: str = "") -> str:
    """``<task folder>__<config stem>[__<variant>][__key=value...]``: stable, readable and unique per grid point."""
    parts = [config_path.parent.name, config_path.stem] + ([variant] if variant else [])
    parts += [f"{key.split('.')[-1]}={_format_value(value)}" for key, value in grid_point.items()]
    return "__".join(_slug(p) for p in parts)


def _resolve(config: str, sweep_dir: Path) -> Path:
    """A config path as given (absolute, or relative to the working directory), else relative to the sweep file."""
    given = Path(config)
    return (given if given.exists() or given.is_absolute() else sweep_dir / given).resolve()


def _resources(raw: Any, errors: List[str]) -> RunResources:
    if raw is None:
        return RunResources()
    if not isinstance(raw, dict):
        errors.append(f"resources: expected a mapping with {' and/or '.join(RESOURCE_KEYS)}")
        return RunResources()
    errors += [f"resources.{key}: unknown key; valid keys: {', '.join(RESOURCE_KEYS)}" for key in raw
               if key not in RESOURCE_KEYS]
    num_cpus, num_gpus = raw.get("num_cpus"), raw.get("num_gpus", 0)
    if num_cpus is not None and (not isinstance(num_cpus, int) or isinstance(num_cpus, bool) or num_cpus < 1):
        errors.append(f"resources.num_cpus: expected an integer >= 1, got {num_cpus!r}")
    if not isinstance(num_gpus, (int, float)) or isinstance(num_gpus, bool) or num_gpus < 0:
        errors.append(f"resources.num_gpus: expected a number >= 0, got {num_gpus!r}")
    return RunResources(num_cpus, num_gpus) if not errors else RunResources()


def _overrides(mapping: Dict[str, Any]) -> Tuple[str, ...]:
    return tuple(f"{key}={_format_value(value)}" for key, value in mapping.items())


def _variant_applies(entries: Dict[str, Any], config: str) -> bool:
    """Whether a variant applies to a config: its file name matches one of the variant's ``configs``
    patterns (every config when the variant has none)."""
    return any(fnmatch.fnmatch(Path(config).name, p) for p in entries.get(VARIANT_CONFIGS_KEY, ["*"]))


def _unmatched_variants(configs: List[str], variants: Dict[str, Dict[str, Any]]) -> List[str]:
    """Errors for a config that no variant applies to and for a variant that applies to no config:
    either would silently drop runs."""
    errors = [f"configs: {config} matches no variant's {VARIANT_CONFIGS_KEY} patterns; valid variants: "
              f"{', '.join(f'{v} {e.get(VARIANT_CONFIGS_KEY)}' for v, e in variants.items())}"
              for config in configs if not any(_variant_applies(e, config) for e in variants.values())]
    return errors + [f"variants.{variant}.{VARIANT_CONFIGS_KEY}: {entries[VARIANT_CONFIGS_KEY]} matches none of "
                     f"the configs' file names ({', '.join(Path(c).name for c in configs)})"
                     for variant, entries in variants.items()
                     if not any(_variant_applies(entries, c) for c in configs)]


def load_sweep(path: Path) -> Sweep:
    """Parse and check a sweep file; every expanded run's config is validated up front."""
    if not path.is_file():
        raise ConfigError([f"sweep file '{path}' does not exist"])
    raw = read_yaml(path) or {}
    errors = [f"{key}: unknown key; valid keys: {', '.join(SWEEP_KEYS)}" for key in raw if key not in SWEEP_KEYS]
    configs = raw.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        errors.append("configs: expected a non-empty list of config paths")
    variants = raw.get("variants") or {"": {}}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        errors.append("variants: expected a mapping of variant names to mappings of dot paths to values")
        variants = {}
    for variant, entries in variants.items():
        patterns = entries.get(VARIANT_CONFIGS_KEY, ["*"])
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
            errors.append(f"variants.{variant}.{VARIANT_CONFIGS_KEY}: expected a non-empty list of config file "
                          f"name patterns, e.g. ['*_ppo.yml']")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        errors.append("grid: expected a mapping of dot paths to non-empty lists of values")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        errors.append("overrides: expected a mapping of dot paths to values")
    smoke = raw.get("smoke", False)
    if not isinstance(smoke, bool):
        errors.append(f"smoke: expected true or false, got {smoke!r}")
    resources = _resources(raw.get("resources"), errors)
    if not errors:
        errors += _unmatched_variants(configs, variants)
    if errors:
        raise ConfigError(errors, source=str(path))
    fixed = _overrides(overrides)
    runs = []
    for config in configs:
        config_path = _resolve(config, path.parent)
        for variant, entries in variants.items():
            if not _variant_applies(entries, config):
                continue
            variant_overrides = {k: v for k, v in entries.items() if k != VARIANT_CONFIGS_KEY}
            for values in itertools.product(*grid.values()):
                point = dict(zip(grid, values))
                spec_overrides = fixed + _overrides(variant_overrides) + _overrides(point)
                try:
                    load_config(config_path, spec_overrides, smoke=smoke)  # fail before anything runs
                except ConfigError as error:
                    raise ConfigError([f"{config_path.name}{f' (variant {variant})' if variant else ''}: {line}"
                                       for line in error.errors], source=str(path)) from error
                grid_point = {"variant": variant, **point} if variant else point
                runs.append(RunSpec(run_name(config_path, point, variant), config_path, spec_overrides, grid_point,
                                    smoke))
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError([f"configs/grid: runs would share a folder name: {', '.join(duplicates)}"], source=str(path))
    name = str(raw.get("name") or path.stem)
    base = Path(raw.get("base_path_to_store_results") or Path("rl4lms_sweeps") / name)
    return Sweep(name=name, runs=runs, base_path=base, resources=resources)
