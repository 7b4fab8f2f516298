"""The fake libnvidia-ml.so.1, built once per test session, and one scenario file per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from navarch.testing import fake_nvml


@pytest.fixture(scope="session")
def fake_nvml_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One shared directory: pynvml keeps the first library it loads for the whole process.
    return fake_nvml.build(tmp_path_factory.getbasetemp() / "fake-nvml")


@pytest.fixture
def scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's scenario goes; the fake library reads it at nvmlInit."""
    path = tmp_path / "scenario.txt"
    monkeypatch.setenv(fake_nvml.SCENARIO_ENV, str(path))
    return path
