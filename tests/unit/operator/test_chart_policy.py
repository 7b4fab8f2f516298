"""The chart ships exactly the operator's built-in default policy."""

from __future__ import annotations

import yaml

from navarch.operator import defaults


def test_chart_default_policy_file_matches_the_builtin_defaults() -> None:
    assert defaults.CHART_FILE.read_text() == defaults.chart_file_text(), (
        "charts/navarch/files/default-policy.yaml is stale: run `make generate`"
    )
    assert yaml.safe_load(defaults.CHART_FILE.read_text()) == defaults.default_policy_object()
