"""Storm protection: candidates, admission order and cap, each policy's state, and the policy
condition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from navarch import api
from navarch.operator.default_policy import default_policy
from navarch.operator.model import NodeView, Taint
from navarch.operator.policy import compile_policy
from navarch.operator.storm import Candidate, StormState, admit, assess, candidates, protect

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_admits_oldest_fault_first_up_to_the_limit() -> None:
    candidates = [
        Candidate("new", at(1)),
        Candidate("old", at(30)),
        Candidate("unknown-time", None),
        Candidate("middle", at(10)),
    ]
    assert admit(0, candidates, 2) == {"old", "middle"}
    assert admit(1, candidates, 4) == {"old", "middle", "new"}
    assert admit(0, candidates, 10) == {"old", "middle", "new", "unknown-time"}


def test_nothing_is_admitted_once_the_limit_is_reached() -> None:
    candidates = [Candidate("a", at(5))]
    assert admit(3, candidates, 3) == set()
    assert admit(5, candidates, 3) == set()
    assert admit(0, candidates, 0) == set()


def test_equal_fault_times_go_by_name() -> None:
    candidates = [Candidate("b", at(5)), Candidate("a", at(5)), Candidate("c", at(5))]
    assert admit(0, candidates, 2) == {"a", "b"}


@given(
    quarantined=st.integers(min_value=0, max_value=20),
    cap=st.integers(min_value=0, max_value=20),
    minutes=st.lists(st.none() | st.integers(min_value=0, max_value=100), max_size=15),
)
def test_admission_respects_the_cap_and_prefers_older_faults(
    quarantined: int, cap: int, minutes: list[int | None]
) -> None:
    candidates = [
        Candidate(f"node-{i}", None if m is None else at(m)) for i, m in enumerate(minutes)
    ]
    admitted = admit(quarantined, candidates, cap)
    assert len(admitted) == min(len(candidates), max(0, cap - quarantined))
    for chosen in (c for c in candidates if c.name in admitted):
        for other in (c for c in candidates if c.name not in admitted):
            if chosen.fault_time is None:
                assert other.fault_time is None
            elif other.fault_time is not None:
                assert chosen.fault_time <= other.fault_time


def test_assess_reports_a_tripped_storm() -> None:
    candidates = [Candidate("a", at(3)), Candidate("b", at(2)), Candidate("c", at(1))]
    admitted, state = assess(governed=20, quarantined=1, candidates=candidates, max_unhealthy="10%")
    assert admitted == {"a"}
    assert state == StormState(governed=20, limit=2, quarantined=1, candidates=3, admitted=1)
    assert state.tripped
    assert state.held == 2
    condition = state.condition(observed_generation=4)
    assert (condition.type, condition.status, condition.reason) == (
        "StormProtection",
        "True",
        "StormProtection",
    )
    assert condition.message == (
        "holding 2 of 3 new quarantines: 1 of 20 governed nodes are quarantined and the limit is 2"
    )
    assert condition.observed_generation == 4


def test_assess_within_limit() -> None:
    admitted, state = assess(governed=20, quarantined=0, candidates=[], max_unhealthy=2)
    assert admitted == set()
    assert not state.tripped
    condition = state.condition()
    assert (condition.status, condition.reason) == ("False", "WithinLimit")
    assert condition.message == "0 of 20 governed nodes quarantined, limit 2"


def sick(minutes: int) -> api.Verdict:
    return api.Verdict(
        health=api.Health.UNHEALTHY,
        action=api.Action.TAINT,
        reason=api.Reason.RULE_MATCHED,
        policy="default",
        fault_time=at(minutes),
    )


def test_candidates_are_the_nodes_that_need_a_new_quarantine() -> None:
    fresh = NodeView("gpu-1")
    held = NodeView("gpu-2", annotations={api.APPLIED_CORDON_ANNOTATION: "true"})
    healthy = api.Verdict(health="Healthy", action="None", reason="AllChecksPassed")  # type: ignore[arg-type]
    found = candidates([(sick(3), fresh), (sick(5), held), (healthy, fresh)], default_policy())
    assert [(c.name, c.fault_time) for c in found] == [("gpu-1", at(3))]


def test_protect_admits_per_policy_and_counts_what_is_taken() -> None:
    one = compile_policy("one", 1, {"maxUnhealthy": 1})
    two = compile_policy("two", 1, {"maxUnhealthy": 2})
    governed = {"one": {"a", "b", "c"}, "two": {"d", "e", "f", "g"}}
    tainted = NodeView("e", taints=(Taint(api.DEFAULT_TAINT_KEY, "NoSchedule"),))
    unwell = {
        "a": (sick(1), NodeView("a")),
        "b": (sick(2), NodeView("b")),
        "d": (sick(3), NodeView("d")),
        "e": (sick(9), tainted),
        "f": (sick(4), NodeView("f")),
    }
    admitted, states = protect(governed, {"one": one, "two": two}, {"g"}, unwell)
    assert admitted == {"b", "f"}
    assert (states["one"].candidates, states["one"].admitted, states["one"].held) == (2, 1, 1)
    assert (states["two"].quarantined, states["two"].candidates, states["two"].held) == (1, 2, 1)
