"""``navarch-sim`` command line: validation and re-rendering, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from navarch.sim import cli
from navarch.testing.controlplane import REPO_ROOT

from .test_report import make_result, with_drains, with_remediation


def test_check_accepts_the_examples_and_names_each(capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted((REPO_ROOT / "scenarios").glob("*.yaml"))
    assert cli.main(["check", *map(str, examples)]) == 0
    out = capsys.readouterr().out
    assert all(f"{path}: ok" in out for path in examples)


def test_check_rejects_a_broken_scenario_with_its_path_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nduration: 1m\nfleet: {nodes: ten}\n")
    assert cli.main(["check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "scenario.fleet.nodes" in err
    assert str(broken) in err


def test_run_refuses_a_missing_scenario_file_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_report_renders_the_page_again_from_result_json(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(make_result(name="again", checks=[("a check", True, "fine")])))
    assert cli.main(["report", str(path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "again" in page
    assert "a check" in page


def test_the_summary_gives_the_drains_when_the_run_had_them() -> None:
    result = with_drains(make_result())
    result["api"]["writesPerNodePerMinute"] = None

    lines = cli.summary(result).splitlines()

    assert (
        "  drains: 21 (20 Drained, 1 TimedOut); 160 pods evicted, 0 deleted, 352 of 512 left; "
        "61.5 evictions/s, peak 88/s"
    ) in lines
    assert any(line.startswith("  quarantine-to-drained: n=20 p50 ") for line in lines)
    assert any(line.startswith("  drain start-to-drained (status.drain): n=20") for line in lines)
    assert any(
        line.startswith(
            "  drains of t=20s xid 79 x20: 160 pods, 77.2 evictions/s first to last, "
            "61.5/s from the fault; quarantine-to-drained n=20"
        )
        for line in lines
    )


def test_the_summary_of_a_run_without_drains_says_nothing_of_them() -> None:
    result = make_result()
    result["api"]["writesPerNodePerMinute"] = None

    assert "drain" not in cli.summary(result)


def test_the_summary_gives_time_to_recovery_steps_and_phases_with_remediation() -> None:
    result = with_remediation(make_result())
    result["api"]["writesPerNodePerMinute"] = None

    lines = cli.summary(result).splitlines()

    assert any(
        line.startswith("  time to recovery (fault to release): n=10 p50 ") for line in lines
    )
    assert (
        "  remediation: 12 quarantines, 10 released, 2 NeedsService (sim-0008, sim-0027)" in lines
    )
    assert (
        "  steps, operator's records: gpu-reset 2 Failed, 8 Succeeded; reboot 2 Failed, "
        "5 Succeeded; validation 3 Failed, 10 Succeeded"
    ) in lines
    assert any(line.startswith("  Jobs: gpu-reset 2 Failed, 8 Succeeded;") for line in lines)
    assert any(line.startswith("  time in Remediating: n=2 p50 ") for line in lines)
    assert "  time in NeedsService: none, 2 still there" in lines


def test_the_summary_of_a_run_without_remediation_says_nothing_of_it() -> None:
    result = make_result()
    result["api"]["writesPerNodePerMinute"] = None

    assert "recovery (fault" not in cli.summary(result)
