"""The committed generated files are exactly what the code generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from navarch import generate
from navarch.operator.default_policy import default_policy_object

FILES = generate.files()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(generate.REPO_ROOT)))
def test_committed_files_match_the_code(path: Path) -> None:
    assert path.read_text() == FILES[path], f"{path} is stale: run `make generate`"


def test_every_crd_directory_and_chart_file_is_generated() -> None:
    for directory in generate.CRD_DIRS:
        assert len([p for p in FILES if p.parent == directory]) == 2
    assert {generate.STATUS_OWNERS_FILE, generate.DEFAULT_POLICY_FILE} <= FILES.keys()


def test_chart_default_policy_file_is_the_builtin_default() -> None:
    assert yaml.safe_load(generate.DEFAULT_POLICY_FILE.read_text()) == default_policy_object()
