"""Expanding a sweep file (base configs x a grid of dot-path overrides) into named runs."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from rl4lms.config import ConfigError, load_config

SWEEP_KEYS = ("name", "configs", "grid", "overrides", "base_path_to_store_results")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a base config, the overrides applied to it, and its folder name."""

    name: str
    config_path: Path
    overrides: Tuple[str, ...]
    grid_point: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str
    runs: List[RunSpec]
    base_path: Path


def _format_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text).strip("-")


def run_name(config_path: Path, grid_point: Dict[str, Any]) -> str:
    """``<task folder>__<config stem>[__key=value...]``: stable, readable and unique per grid point."""
    parts = [config_path.parent.name, config_path.stem]
    parts += [f"{key.split('.')[-1]}={_format_value(value)}" for key, value in grid_point.items()]
    return "__".join(_slug(p) for p in parts)


def _resolve(config: str, sweep_dir: Path) -> Path:
    """A config path as given (absolute, or relative to the working directory), else relative to the sweep file."""
    given = Path(config)
    return (given if given.exists() or given.is_absolute() else sweep_dir / given).resolve()


def load_sweep(path: Path) -> Sweep:
    """Parse and check a sweep file; every expanded run's config is validated up front."""
    if not path.is_file():
        raise ConfigError([f"sweep file '{path}' does not exist"])
    raw = yaml.safe_load(path.read_text()) or {}
    errors = [f"{key}: unknown key; valid keys: {', '.join(SWEEP_KEYS)}" for key in raw if key not in SWEEP_KEYS]
    configs = raw.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        errors.append("configs: expected a non-empty list of config paths")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        errors.append("grid: expected a mapping of dot paths to non-empty lists of values")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        errors.append("overrides: expected a mapping of dot paths to values")
    if errors:
        raise ConfigError(errors, source=str(path))
    fixed = tuple(f"{key}={_format_value(value)}" for key, value in overrides.items())
    runs = []
    for config in configs:
        config_path = _resolve(config, path.parent)
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            spec_overrides = fixed + tuple(f"{key}={_format_value(value)}" for key, value in point.items())
            load_config(config_path, spec_overrides)  # fail before anything runs
            runs.append(RunSpec(run_name(config_path, point), config_path, spec_overrides, point))
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError([f"configs/grid: runs would share a folder name: {', '.join(duplicates)}"], source=str(path))
    name = str(raw.get("name") or path.stem)
    base = Path(raw.get("base_path_to_store_results") or Path("rl4lms_sweeps") / name)
    return Sweep(name=name, runs=runs, base_path=base)
