"""The project's errors live in ``rl4lms.errors``, each of one of two kinds that the command line maps
to its exit status: a setup error exits 2 (a locked run folder 3), a stopped run exits 1."""
from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import pytest

import rl4lms.errors as errors
from conftest import write_small_config
from rl4lms.cli import main
from rl4lms.training.trainer import OnPolicyTrainer

PACKAGE = Path(errors.__file__).resolve().parent
INTERNAL = {errors.ToolCallError}
"""Raised and caught inside the project; never reaches the command line."""


def error_classes() -> list:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, Exception) and cls.__module__ == errors.__name__]


def test_every_error_is_of_exactly_one_kind() -> None:
    for cls in error_classes():
        if cls in (errors.SetupError, errors.RunStoppedError) or cls in INTERNAL:
            continue
        kinds = [kind for kind in (errors.SetupError, errors.RunStoppedError) if issubclass(cls, kind)]
        assert len(kinds) == 1, cls
        assert cls.__doc__, cls


def test_no_other_module_defines_an_error() -> None:
    """Every class of the package that derives from a built-in exception is defined in rl4lms/errors.py."""
    builtin_exceptions = {name for name, obj in vars(builtins).items()
                          if isinstance(obj, type) and issubclass(obj, BaseException)}
    defined_elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
                if bases & builtin_exceptions or any(name.endswith("Error") for name in bases):
                    defined_elsewhere.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert not defined_elsewhere



def test_the_errors_module_imports_nothing_of_the_project() -> None:
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [module for module in modules if module.startswith("rl4lms")]

@pytest.mark.parametrize("error,status,line", [
    (errors.GGUFError("no GGUF file at /nowhere"), 2, "error: no GGUF file at /nowhere"),
    (errors.RunLockedError("run folder in use"), 3, "error: run folder in use"),
    (errors.SpiceRunError("SPICE failed (exit code 1)"), 1, "error: training stopped: SPICE failed (exit code 1)"),
    (errors.NonFiniteLossError("loss is nan"), 1, "error: training stopped: loss is nan"),
])
def test_command_line_exit_status_follows_the_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture, error: Exception, status: int,
                                                   line: str) -> None:
    def fail(self: OnPolicyTrainer) -> None:
        raise error

    monkeypatch.setattr(OnPolicyTrainer, "train_and_eval", fail)
    config = write_small_config(tmp_path, n_iters=1)
    assert main(["--config_path", str(config), "--base_path_to_store_results", str(tmp_path)]) == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
