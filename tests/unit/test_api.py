"""The condition helper: lastTransitionTime moves only when the status flips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from navarch import api

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def condition(status: str, reason: str = "R", message: str = "") -> api.Condition:
    return api.Condition(type="Healthy", status=status, reason=reason, message=message)  # type: ignore[arg-type]


def test_a_new_condition_is_stamped_and_appended() -> None:
    other = api.Condition(type="Other", status="True", reason="X", last_transition_time=T0)
    out = api.set_condition([other], condition("True"), T0 + timedelta(minutes=1))
    assert [c.type for c in out] == ["Other", "Healthy"]
    assert out[1].last_transition_time == T0 + timedelta(minutes=1)


def test_the_transition_time_stays_while_the_status_holds() -> None:
    first = api.set_condition([], condition("False", "A"), T0)
    later = api.set_condition(first, condition("False", "B", "new"), T0 + timedelta(hours=1))
    assert later[0].last_transition_time == T0
    assert (later[0].reason, later[0].message) == ("B", "new")
    flipped = api.set_condition(later, condition("True"), T0 + timedelta(hours=2))
    assert flipped[0].last_transition_time == T0 + timedelta(hours=2)
