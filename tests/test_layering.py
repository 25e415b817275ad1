"""Imports flow one way between the component folders: scoring <- data_pools, scoring <- metrics <- rewards,
and algorithms <- rlhf (the RLHF stages build on the algorithms' shared pieces, never the reverse).

Checked on the source (every ``import`` statement, also those inside functions) and by importing each
folder in a fresh interpreter, which must not pull in the folders above it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rl4lms"
FORBIDDEN: Dict[str, Set[str]] = {
    "scoring": {"data_pools", "metrics", "rewards"},
    "data_pools": {"metrics", "rewards"},
    "metrics": {"data_pools", "rewards"},
    "algorithms": {"rlhf"},
}


def imported_folders(folder: str) -> Set[str]:
    """The ``rl4lms.<folder>`` packages that the modules of ``folder`` import."""
    found = set()
    for path in (PACKAGE / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found |= {name.split(".")[1] for name in names if name.startswith("rl4lms.") and name.count(".") >= 1}
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_folder_imports_its_sibling_back(folder: str) -> None:
    assert not imported_folders(folder) & FORBIDDEN[folder]


@pytest.mark.parametrize("module", ["rl4lms.scoring.answers", "rl4lms.data_pools.gsm8k", "rl4lms.metrics.intent",
                                    "rl4lms.metrics.synthetic"])
@pytest.mark.slow
def test_importing_a_lower_folder_loads_no_higher_one(module: str) -> None:
    code = (f"import sys, {module}; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('rl4lms.') and m.count('.') >= 1}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folder = module.split(".")[1]
    assert not set(ast.literal_eval(done.stdout.strip())) & FORBIDDEN[folder]
