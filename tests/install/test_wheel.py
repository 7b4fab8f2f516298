"""The wheels, installed into a fresh virtualenv as the image and a user install them.

Needs the package index for the dependencies, and no cluster. One virtualenv serves every
test, so that the dependencies are installed once, in three stages: the image's wheel (built
from the source without the ``sim`` extra's tooling, as .dockerignore leaves it out), then the
project's whole wheel without extras, then that wheel with the ``sim`` extra. Each stage runs
its commands once installed, and the tests read what they said.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from navarch import extras

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "scenarios" / "quick.yaml"
INSTALL_TIMEOUT = 600
"""Seconds a pip command may take: the first one downloads every dependency."""


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class Stages:
    image: dict[str, Ran]
    """Each command with the image's wheel installed."""
    runtime: dict[str, Ran]
    """Each command with the whole wheel installed without extras."""
    sim: dict[str, Ran]
    """Each command with the whole wheel and the sim extra."""
    image_wheel: list[str]
    """The files in the image's wheel."""


def tooling_paths() -> set[Path]:
    """The files and folders of ``extras.TOOLING`` in the source tree."""
    paths = set()
    for module in extras.TOOLING:
        path = REPO.joinpath(*module.split("."))
        paths.add(path if path.is_dir() else path.with_suffix(".py"))
    return paths


def source_tree(into: Path, leave_out: set[Path]) -> Path:
    """What the wheel is built from, as the image's build context holds it."""
    into.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, into / name)

    def ignored(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or Path(folder, n) in leave_out}

    shutil.copytree(REPO / "navarch", into / "navarch", ignore=ignored)
    return into


def wheel(source: Path, into: Path) -> Path:
    pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(into), str(source))
    (built,) = into.glob("navarch-*.whl")
    return built


def pip(python: str, *args: str) -> None:
    subprocess.run(
        [python, "-m", "pip", "--quiet", "--disable-pip-version-check", *args],
        check=True,
        timeout=INSTALL_TIMEOUT,
    )


RUNTIME_COMMANDS = ("navarch-agent --help", "navarch-operator --help")
WITHOUT_EXTRA_COMMANDS = (*RUNTIME_COMMANDS, "navarch-sim --help", "navarch-demo")
WITH_EXTRA_COMMANDS = (*RUNTIME_COMMANDS, "navarch-sim --help", f"navarch-sim check {QUICK}")


def commands(venv: Path, workdir: Path, lines: tuple[str, ...]) -> dict[str, Ran]:
    """Runs console scripts as a user would, away from the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = {}
    for line in lines:
        program, *args = line.split()
        done = subprocess.run(
            [str(venv / "bin" / program), *args],
            capture_output=True,
            check=False,
            text=True,
            cwd=workdir,
            env=env,
            timeout=120,
        )
        ran[line] = Ran(done.returncode, done.stdout, done.stderr)
    return ran


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> Stages:
    work = tmp_path_factory.mktemp("wheel")
    image_wheel = wheel(source_tree(work / "image-src", tooling_paths()), work / "image")
    whole_wheel = wheel(source_tree(work / "src", set()), work / "whole")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")

    pip(python, "install", str(image_wheel))
    image = commands(venv, work, WITHOUT_EXTRA_COMMANDS)
    pip(python, "install", "--force-reinstall", "--no-deps", str(whole_wheel))
    runtime = commands(venv, work, WITHOUT_EXTRA_COMMANDS)
    pip(python, "install", f"navarch[{extras.EXTRA}] @ {whole_wheel.as_uri()}")
    sim = commands(venv, work, WITH_EXTRA_COMMANDS)

    with zipfile.ZipFile(image_wheel) as archive:
        files = archive.namelist()
    return Stages(image=image, runtime=runtime, sim=sim, image_wheel=files)


def stage(stages: Stages, name: str) -> dict[str, Ran]:
    ran: dict[str, Ran] = getattr(stages, name)
    return ran


@pytest.mark.parametrize("name", ["image", "runtime", "sim"])
@pytest.mark.parametrize("command", RUNTIME_COMMANDS)
def test_the_agent_and_the_operator_start_in_every_install(
    stages: Stages, name: str, command: str
) -> None:
    ran = stage(stages, name)[command]

    assert ran.code == 0, ran.err
    assert ran.out.startswith("usage: ")


@pytest.mark.parametrize("name", ["image", "runtime"])
@pytest.mark.parametrize("command", ["navarch-sim --help", "navarch-demo"])
def test_without_the_extra_the_tooling_says_in_one_line_which_extra_to_install(
    stages: Stages, name: str, command: str
) -> None:
    ran = stage(stages, name)[command]

    assert ran.code != 0
    assert ran.out == ""
    assert ran.err.count("\n") == 1, ran.err
    assert "pip install 'navarch[sim]'" in ran.err
    assert "Traceback" not in ran.err


def test_the_image_says_which_tooling_modules_it_lacks(stages: Stages) -> None:
    err = stages.image["navarch-sim --help"].err

    assert all(module in err for module in extras.TOOLING)


def test_the_image_wheel_holds_the_runtime_and_no_tooling(stages: Stages) -> None:
    modules = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in stages.image_wheel
        if name.endswith(".py")
    }

    assert {"navarch.api", "navarch.extras", "navarch.node_agent.cli", "navarch.operator.cli"} <= (
        modules
    )
    tooling = [m for m in modules if any(m == t or m.startswith(f"{t}.") for t in extras.TOOLING)]
    assert tooling == []


def test_with_the_sim_extra_navarch_sim_runs(stages: Stages) -> None:
    ran = stages.sim["navarch-sim --help"]

    assert ran.code == 0, ran.err
    assert ran.out.startswith("usage: navarch-sim")


def test_with_the_sim_extra_navarch_sim_checks_a_scenario(stages: Stages) -> None:
    ran = stages.sim[f"navarch-sim check {QUICK}"]

    assert ran.code == 0, ran.err
    assert ran.out == f"{QUICK}: ok (quick, 20 nodes)\n"
