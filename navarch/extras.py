"""The entry points of the ``sim`` extra: the fleet simulator and the demo.

The runtime (the API, the agent and the operator) is all the image holds. The simulator, the
demo and the local control plane they start are tooling, installed with ``navarch[sim]``. Their
entry points live here, in the runtime, so that without the extra they say what to install
instead of failing on a missing import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable

EXTRA = "sim"
TOOLING = ("navarch.sim", "navarch.testing", "navarch.demo")
"""The modules installed only for the extra; the runtime never imports them."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def requirements(extra: str) -> list[str]:
    """The names of the distributions that ``extra`` adds, from the installed metadata."""
    names = []
    for requirement in importlib.metadata.requires("navarch") or []:
        spec, _, marker = requirement.partition(";")
        named = _EXTRA_MARKER.search(marker)
        match = _NAME.match(spec.strip())
        if named and named.group(1) == extra and match:
            names.append(match.group())
    return names


def missing() -> list[str]:
    """What the extra provides that is not installed: tooling modules, then distributions."""
    absent = [module for module in TOOLING if importlib.util.find_spec(module) is None]
    for name in requirements(EXTRA):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    return absent


def _run(program: str, module: str) -> int:
    absent = missing()
    if absent:
        print(
            f"{program} needs navarch's {EXTRA} extra, which is not installed "
            f"(missing {', '.join(absent)}): pip install 'navarch[{EXTRA}]'",
            file=sys.stderr,
        )
        return 1
    main: Callable[[], int] = importlib.import_module(module).main
    return main()


def sim() -> int:
    """``navarch-sim``."""
    return _run("navarch-sim", "navarch.sim.cli")


def demo() -> int:
    """``navarch-demo``, which ``make demo`` runs."""
    return _run("navarch-demo", "navarch.demo")
