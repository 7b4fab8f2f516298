"""The runtime stands apart from the ``sim`` extra's tooling, and the tooling's entry points say
which extra they need.

The imports are read from the source, so an import inside a function counts as much as one at
the top of a module.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import navarch
from navarch import extras

PACKAGE = Path(navarch.__file__).parent
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_tooling(module: str) -> bool:
    return any(module == t or module.startswith(f"{t}.") for t in extras.TOOLING)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def runtime() -> dict[str, Path]:
    return {name: path for name, path in modules().items() if not is_tooling(name)}


def tooling() -> dict[str, Path]:
    return {name: path for name, path in modules().items() if is_tooling(name)}


def imported(source: str) -> Iterator[str]:
    """Every module ``source`` imports, anywhere in it; ``from a import b`` names ``a`` and
    ``a.b``, since ``b`` may be a module."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def dependencies(distribution: str) -> list[str]:
    """The names of the distributions that ``distribution`` needs without any extra."""
    names = []
    for requirement in importlib.metadata.requires(distribution) or []:
        spec, _, marker = requirement.partition(";")
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
        if match and "extra" not in marker:
            names.append(match.group())
    return names


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def closure(names: Iterable[str]) -> set[str]:
    """The distributions that installing ``names`` brings, by their own metadata."""
    todo, seen = [normalized(n) for n in names], set[str]()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(normalized(n) for n in dependencies(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return seen


def undeclared(sources: dict[str, Path], provided: set[str]) -> set[tuple[str, str]]:
    """(module, import) for each third-party import that no distribution in ``provided``
    supplies."""
    suppliers = importlib.metadata.packages_distributions()
    found = set()
    for name, path in sources.items():
        for module in imported(path.read_text()):
            top = module.partition(".")[0]
            if top in sys.stdlib_module_names or top in ("__future__", "navarch"):
                continue
            if not {normalized(d) for d in suppliers.get(top, [])} & provided:
                found.add((name, top))
    return found


def test_the_import_reader_sees_imports_inside_functions_and_from_imports() -> None:
    source = "def run():\n    from navarch.sim import cli\n    import cryptography.x509\n"

    assert set(imported(source)) == {"navarch.sim", "navarch.sim.cli", "cryptography.x509"}


def test_the_runtime_imports_no_tooling_module() -> None:
    offending = {
        (name, module)
        for name, path in runtime().items()
        for module in imported(path.read_text())
        if is_tooling(module)
    }

    assert runtime()
    assert offending == set()


def test_the_runtime_imports_only_what_its_own_dependencies_supply() -> None:
    assert undeclared(runtime(), closure(dependencies("navarch"))) == set()


def test_the_sim_extra_supplies_what_the_tooling_imports_beyond_the_runtime() -> None:
    base = dependencies("navarch")
    with_sim = closure([*base, *extras.requirements(extras.EXTRA)])

    assert tooling()
    assert undeclared(tooling(), with_sim) == set()
    assert undeclared(tooling(), closure(base)) != set(), "the sim extra would be pointless"


def test_the_image_leaves_out_exactly_the_tooling_modules() -> None:
    rules = (REPO / ".dockerignore").read_text().splitlines()
    left_out = {REPO / r.rstrip("/") for r in rules if r.startswith("navarch/") and "*" not in r}
    tooling_paths = set()
    for module in extras.TOOLING:
        path = REPO.joinpath(*module.split("."))
        tooling_paths.add(path if path.is_dir() else path.with_suffix(".py"))

    assert left_out == tooling_paths


def test_an_entry_point_runs_the_tooling_when_the_extra_is_installed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["navarch-sim", "check", str(REPO / "scenarios/quick.yaml")])

    assert extras.sim() == 0
    assert "quick.yaml: ok" in capsys.readouterr().out


def test_without_the_extras_distributions_an_entry_point_names_the_extra_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extras, "requirements", lambda extra: ["navarch-absent-dependency"])

    assert extras.demo() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "navarch-demo needs navarch's sim extra" in err
    assert "missing navarch-absent-dependency" in err
    assert "pip install 'navarch[sim]'" in err


def test_without_the_tooling_modules_an_entry_point_names_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extras, "TOOLING", ("navarch.absent_tooling",))

    assert extras.sim() == 1
    assert "(missing navarch.absent_tooling)" in capsys.readouterr().err


def test_the_sim_extra_is_read_from_the_installed_metadata() -> None:
    assert "cryptography" in extras.requirements("sim")
    assert "pytest" in extras.requirements("dev")
    assert "pytest" not in extras.requirements("sim")
