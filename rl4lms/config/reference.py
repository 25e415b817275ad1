"""The config reference: every section's keys from the schema, and every built-in component's
constructor and docstring, read from its source without importing it (so no torch).

``rl4lms-train --describe <target>`` prints one part; ``docs/config_reference.md`` is the whole of
it (``python -m rl4lms.config.reference > docs/config_reference.md``), and a test fails when that
page is stale.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

from rl4lms.config.schema import CONFIG_SCHEMA, Component, ComponentList, Key, Section
from rl4lms.errors import DescribeError
from rl4lms.registry import ALL_REGISTRIES

REGISTRY_TITLES = {"datapool": "Data pools", "reward_fn": "Reward functions", "metric": "Metrics",
                   "alg": "Algorithms", "policy": "Policies"}
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _module_file(module: str) -> Optional[Path]:
    """The source file of ``module``; the package's own found without importing anything."""
    if module.split(".")[0] == PACKAGE_ROOT.name:
        candidate = PACKAGE_ROOT.parent.joinpath(*module.split(".")).with_suffix(".py")
        return candidate if candidate.is_file() else None
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def _class_node(tree: ast.Module, name: str) -> Optional[ast.ClassDef]:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _string_value(expr: ast.expr, tree: ast.Module) -> str:
    """A docstring built as ``__doc__ = "..." + NAME``: string constants and names bound to them,
    in the module or imported from another of the package's modules."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _string_value(expr.left, tree) + _string_value(expr.right, tree)
    if isinstance(expr, ast.Name):
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == expr.id for t in node.targets):
                return _string_value(node.value, tree)
            if isinstance(node, ast.ImportFrom) and node.module and any(a.name == expr.id for a in node.names):
                path = _module_file(node.module)
                if path is not None:
                    return _string_value(expr, ast.parse(path.read_text()))
    return ""


def _docstring(tree: ast.Module, node: ast.ClassDef) -> str:
    doc = ast.get_docstring(node, clean=False)
    if doc is None:
        assigned = next((n.value for n in node.body if isinstance(n, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "__doc__" for t in n.targets)), None)
        doc = _string_value(assigned, tree) if assigned is not None else ""
    return inspect.cleandoc(doc)


def _constructor(tree: ast.Module, node: ast.ClassDef, method: str) -> Optional[str]:
    """``(arg=default, ...)`` of ``method`` on the class or its first base in the same module that has it."""
    while node is not None:
        found = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
        if found is not None:
            args = ast.unparse(found.args)
            for drop in ("self, ", "cls, ", "self", "cls"):
                if args.startswith(drop):
                    return f"({args[len(drop):]})"
            return f"({args})"
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        node = next((c for c in (_class_node(tree, b) for b in bases) if c is not None), None)
    return None


def component_doc(kind: str, component_id: str) -> Tuple[str, str, str]:
    """``(entry point, constructor signature, docstring)`` of a registered component."""
    entry = ALL_REGISTRIES[kind].entry_point(component_id)
    module, _, name = entry.partition(":")
    path = _module_file(module)
    if path is None:
        return entry, "", ""
    tree = ast.parse(path.read_text())
    node = _class_node(tree, name)
    if node is None:
        return entry, "", ""
    signature = _constructor(tree, node, "prepare" if kind == "datapool" else "__init__") or ""
    return entry, signature, _docstring(tree, node)


def package_ids(kind: str) -> List[str]:
    """The ids of ``kind`` that the package itself provides (not those a user registered)."""
    registry = ALL_REGISTRIES[kind]
    return [i for i in registry.ids() if registry.entry_point(i).split(".")[0] == PACKAGE_ROOT.name]


def _type_name(key: Key) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in key.types)


def _default(key: Key) -> str:
    return "required" if key.required else f"`{key.default!r}`"


def section_text(section: Section, path: str) -> List[str]:
    """A Markdown table of a section's plain keys, then its subsections and components."""
    lines = [f"## `{path}`" if path else "## Top level", ""]
    if section.doc:
        lines += [section.doc, ""]
    keys = {name: spec for name, spec in section.keys.items() if isinstance(spec, Key)}
    if keys:
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, key in keys.items():
            choices = f" (one of {', '.join(repr(c) for c in key.choices)})" if key.choices else ""
            lines.append(f"| `{name}` | {_type_name(key)} | {_default(key)} | {key.doc}{choices} |")
        lines.append("")
    for name, spec in section.keys.items():
        child = f"{path}.{name}" if path else name
        if isinstance(spec, Section):
            lines += section_text(spec, child)
        elif isinstance(spec, (Component, ComponentList)):
            lines += component_list_text(spec, child)
    return lines


def component_list_text(spec: Any, path: str) -> List[str]:
    """The ids a component key accepts, each with its docstring's first line."""
    shape = "a list of `{id, args}` entries" if isinstance(spec, ComponentList) else "`{id, args}`"
    lines = [f"## `{path}`", "", f"{shape}; `args` are the constructor arguments of the id's class "
             f"(`rl4lms-train --describe <id>`). {spec.doc}".rstrip(), ""]
    for component_id in package_ids(spec.registry):
        summary = component_doc(spec.registry, component_id)[2].split("\n\n")[0].replace("\n", " ")
        lines.append(f"- `{component_id}`: {summary}")
    lines.append("")
    if isinstance(spec, Component):
        for name, extra in spec.extra_keys.items():
            if isinstance(extra, Section):
                lines += section_text(extra, f"{path}.{name}")
            else:
                lines += component_list_text(extra, f"{path}.{name}")
    return lines


def component_text(kind: str, component_id: str) -> List[str]:
    entry, signature, doc = component_doc(kind, component_id)
    return [f"### `{component_id}` ({kind})", "", f"`{entry}{signature}`", "", doc, ""]


def _schema_node(path: str) -> Any:
    node: Any = CONFIG_SCHEMA
    for part in path.split("."):
        if isinstance(node, Section) and part in node.keys:
            node = node.keys[part]
        elif isinstance(node, Component) and part in node.extra_keys:
            node = node.extra_keys[part]
        elif isinstance(node, (Component, ComponentList)) and part == "args":
            return ("args", node.registry)
        else:
            return None
    return node


def reference() -> str:
    """The whole reference as Markdown: sections, then every component in full."""
    lines = ["# Config reference", "",
             "Generated from `rl4lms/config/schema.py` and the components' docstrings by "
             "`python -m rl4lms.config.reference`; `rl4lms-train --describe <key path or id>` prints any part of "
             "it. A test fails when this page is stale.", ""]
    lines += section_text(CONFIG_SCHEMA, "")
    for kind, title in REGISTRY_TITLES.items():
        lines += [f"## {title} (`{kind}` ids)", ""]
        for component_id in package_ids(kind):
            lines += component_text(kind, component_id)
    return "\n".join(lines).rstrip() + "\n"


def describe(target: str) -> str:
    """What ``rl4lms-train --describe target`` prints: a key path (``alg.args``, ``env``,
    ``train_evaluation.metrics``), a component id (``ppo``, ``rouge``) or ``all``."""
    if target == "all":
        return reference()
    node = _schema_node(target)
    if isinstance(node, tuple):  # <component>.args: every id's constructor
        kind = node[1]
        lines = [f"## `{target}`: the constructor arguments of `{target.rsplit('.', 1)[0]}.id`'s class", ""]
        for component_id in package_ids(kind):
            lines += component_text(kind, component_id)
        return "\n".join(lines).rstrip() + "\n"
    if isinstance(node, Section):
        return "\n".join(section_text(node, target)).rstrip() + "\n"
    if isinstance(node, (Component, ComponentList)):
        return "\n".join(component_list_text(node, target)).rstrip() + "\n"
    if isinstance(node, Key):
        return "\n".join(section_text(Section({target.rsplit(".", 1)[-1]: node}), target)).rstrip() + "\n"
    matches = [kind for kind, registry in ALL_REGISTRIES.items() if target in registry]
    if not matches:
        raise DescribeError(f"--describe: {target!r} is neither a config key path (e.g. {', '.join(CONFIG_SCHEMA.keys)}, "
                            f"alg.args) nor a component id (e.g. {', '.join(package_ids('alg'))}); "
                            f"or use 'all'")
    return "\n".join(line for kind in matches for line in component_text(kind, target)).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.stdout.write(describe(argv[0] if argv else "all"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
