"""The operator's core is a pipeline: each stage imports only the stages before it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import navarch.operator

PACKAGE = Path(navarch.operator.__file__).parent
STAGES = [
    ["model", "drain_plan", "ladder", "lifecycle", "pace", "slots", "step_objects"],
    ["drain_status", "history"],
    ["rules"],
    ["policy"],
    ["default_policy"],
    ["verdict"],
    ["gnh_status", "xid_events", "node_plan"],
    ["planner"],
    ["storm"],
    ["workqueue"],
    ["index"],
    ["writer"],
    ["policy_status"],
    ["lister", "reporter", "drainer"],
    ["steps"],
    ["remediator"],
    ["orders"],
    ["reconciler"],
]
RANK = {module: rank for rank, modules in enumerate(STAGES) for module in modules}


def imported(module: str) -> set[str]:
    """The modules of navarch.operator that ``module`` imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "navarch.operator":
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "navarch.operator."
        ):
            out.add((node.module or "").split(".")[2])
    return out


@pytest.mark.parametrize("module", sorted(RANK))
def test_a_stage_imports_only_the_stages_before_it(module: str) -> None:
    later = {m for m in imported(module) if RANK.get(m, -1) >= RANK[module]}
    assert not later, f"{module} imports {sorted(later)}, which come at or after it"


def test_every_module_of_the_core_has_its_place() -> None:
    shell = {"__init__", "cli", "handlers", "health", "kube", "memory", "metrics", "probes"}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - shell
    assert modules == set(RANK)
