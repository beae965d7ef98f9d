"""The layers hold: no import cycles, no upward arrows, and the builder imports without torch."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import REPO

PACKAGE = REPO / "flan_builder"
SUBPACKAGES = ("lm", "training", "evaluation", "lift", "llm2llm", "compare")
# what each layer may not import (anything below it is fine)
FORBIDDEN = {
    "flat": set(SUBPACKAGES),
    "sources": set(SUBPACKAGES),
    "lm": {"training", "evaluation", "lift", "llm2llm", "compare"},
    "training": {"evaluation", "lift", "llm2llm", "compare"},
    "evaluation": {"training", "lift", "llm2llm", "compare"},
    "lift": {"llm2llm", "compare"},
    "llm2llm": {"lift", "compare"},
    "compare": {"lift", "llm2llm"},  # trains (training/) and evaluates (evaluation/) side by side
}


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> flan_builder modules it imports anywhere (top level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "metrics" in path.relative_to(PACKAGE).parts[:2] and path.parent.name != "evaluation":
            continue  # evaluate modules loaded by path
        name = _module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flan_builder"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("flan_builder")}
        graph[name] = found
    modules = set(graph)
    return {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in (*SUBPACKAGES, "sources") else "flat"


def test_no_import_cycles():
    graph = _imports()
    seen: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for target in sorted(graph[node]):
            if seen.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in seen:
                visit(target, [*path, target])
        seen[node] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])


def test_layers_import_downward_only():
    bad = []
    for module, targets in _imports().items():
        if module in ("flan_builder.cli", "flan_builder.__main__"):
            continue  # the entry point registers every subsystem's subcommand
        for target in targets:
            if _layer(target) in FORBIDDEN[_layer(module)]:
                bad.append(f"{module} -> {target}")
    assert not bad, bad


def test_the_builder_imports_without_torch():
    code = ("import sys, flan_builder.cli, flan_builder.build, flan_builder.sources, flan_builder.lm.base, "
            "flan_builder.evaluation.suite; flan_builder.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
