"""The scenario timeline: order, reproducibility, random arrivals and restarts, descriptions."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

from navarch.sim.plan import Step, StepKind, describe_target, plan
from navarch.sim.scenario import FaultKind, Scenario, Target, parse


def scenario(
    *,
    duration: str = "10m",
    nodes: int = 100,
    seed: int = 1,
    faults: list[dict[str, Any]] | None = None,
    random_faults: list[dict[str, Any]] | None = None,
    recoveries: list[dict[str, Any]] | None = None,
    restarts: tuple[str, str] | None = None,
    api_server_restarts: list[dict[str, str]] | None = None,
) -> Scenario:
    data: dict[str, Any] = {
        "name": "plan-test",
        "seed": seed,
        "duration": duration,
        "fleet": {"nodes": nodes, "racks": 4},
        "faults": faults or [],
        "randomFaults": random_faults or [],
        "recoveries": recoveries or [],
    }
    if restarts is not None:
        data["operator"] = {"restarts": {"minInterval": restarts[0], "maxInterval": restarts[1]}}
    if api_server_restarts is not None:
        data["apiServer"] = {"restarts": api_server_restarts}
    return parse(data, "test")


def fault(at: str, kind: str = "xid 79", **target: Any) -> dict[str, Any]:
    return {"at": at, "fault": kind, **(target or {"nodes": 1})}


def rain(rate: float, mix: dict[str, float] | None = None, **keys: Any) -> dict[str, Any]:
    """A random-faults source."""
    return {"rate": rate, "mix": mix or {"xid 79": 1}, **keys}


def busy_scenario(seed: int = 1) -> Scenario:
    """Scheduled faults and recoveries out of order, random faults, and restarts."""
    return scenario(
        seed=seed,
        faults=[
            fault("5m"),
            fault("30s", "ecc", rack=2),
            fault("2m", "silence", names=["sim-0001"]),
        ],
        recoveries=[{"at": "4m", "all": True}, {"at": "1m", "rack": 2}],
        random_faults=[rain(0.2, {"xid 79": 1, "xid 13": 1})],
        restarts=("10s", "40s"),
        api_server_restarts=[{"at": "3m", "down": "20s"}],
    )


def test_steps_come_out_sorted_by_time() -> None:
    steps = plan(busy_scenario())

    times = [s.at for s in steps]
    assert times == sorted(times)
    assert {s.kind for s in steps} == set(StepKind)


def test_steps_at_the_same_time_keep_the_order_they_were_written_in() -> None:
    steps = plan(scenario(faults=[fault("10s", "ecc"), fault("10s", "gpu-lost")]))

    assert [str(s.fault) for s in steps] == ["ecc", "gpu-lost"]


def test_scheduled_faults_and_recoveries_carry_their_details() -> None:
    steps = plan(
        scenario(
            faults=[{"at": "20s", "fault": "xid 48", "rack": 3, "recoverAfter": "45s"}],
            recoveries=[{"at": "90s", "nodes": 2}],
        )
    )

    assert steps == [
        Step(20.0, StepKind.FAULT, Target(rack=3), FaultKind("xid", 48), 45.0),
        Step(90.0, StepKind.RECOVER, Target(count=2)),
    ]


def test_recoveries_after_the_duration_are_left_out() -> None:
    steps = plan(scenario(duration="1m", recoveries=[{"at": "2m", "all": True}]))

    assert steps == []


def test_same_seed_gives_the_same_plan() -> None:
    assert plan(busy_scenario(seed=4)) == plan(busy_scenario(seed=4))


def test_different_seed_gives_a_different_plan() -> None:
    assert plan(busy_scenario(seed=4)) != plan(busy_scenario(seed=5))


def test_random_fault_arrivals_fall_within_start_and_end() -> None:
    steps = plan(scenario(random_faults=[rain(2, start="1m", end="3m")]))

    assert steps
    assert all(60.0 <= s.at < 180.0 for s in steps)


def test_random_fault_count_is_plausible_for_rate_times_span() -> None:
    rate, span = 2.0, 5000.0
    steps = plan(scenario(duration=f"{span:g}s", random_faults=[rain(rate)]))

    expected = rate * span
    # Poisson: the standard deviation is sqrt(expected) = 100; allow six of them.
    assert abs(len(steps) - expected) < 6 * math.sqrt(expected)


def test_random_fault_mix_follows_the_weights() -> None:
    steps = plan(scenario(duration="5000s", random_faults=[rain(2, {"xid 79": 3, "ecc": 1})]))

    kinds = Counter(str(s.fault) for s in steps)
    assert set(kinds) == {"xid 79", "ecc"}
    assert abs(kinds["xid 79"] / len(steps) - 0.75) < 0.05


def test_random_faults_hit_one_random_node_and_carry_recover_after() -> None:
    steps = plan(scenario(random_faults=[rain(1, recoverAfter="30s")]))

    assert steps
    assert all(s.kind is StepKind.FAULT for s in steps)
    assert {s.target for s in steps} == {Target(count=1)}
    assert {s.recover_after for s in steps} == {30.0}


def test_scheduled_steps_are_marked_scheduled_and_random_ones_not() -> None:
    steps = plan(
        scenario(
            faults=[fault("15s")],
            recoveries=[{"at": "45s", "all": True}],
            random_faults=[rain(0.5, {"gpu-lost": 1})],
        )
    )

    written = [s for s in steps if s.scheduled]
    drawn = [s for s in steps if not s.scheduled]
    assert [(s.at, s.kind) for s in written] == [(15.0, StepKind.FAULT), (45.0, StepKind.RECOVER)]
    assert drawn
    assert {str(s.fault) for s in drawn} == {"gpu-lost"}


def test_restarts_fall_within_the_duration_with_gaps_within_the_interval() -> None:
    steps = plan(scenario(duration="1h", restarts=("5s", "20s")))

    times = [s.at for s in steps if s.kind is StepKind.RESTART]
    assert len(times) == len(steps) > 100
    assert all(0 < t < 3600.0 for t in times)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    assert all(5.0 <= gap <= 20.0 for gap in gaps)


def test_restarts_are_planned_only_when_the_scenario_asks_for_them() -> None:
    steps = plan(busy_scenario())

    assert StepKind.RESTART in {s.kind for s in steps}
    assert all(s.kind is not StepKind.RESTART for s in plan(scenario(faults=[fault("1s")])))


def test_describe_names_the_fault_and_its_target() -> None:
    xid = FaultKind("xid", 79)

    assert Step(1.0, StepKind.FAULT, Target(count=150), xid).describe() == "xid 79 x150"
    assert Step(1.0, StepKind.FAULT, Target(rack=4), FaultKind("silence")).describe() == (
        "silence rack 4"
    )
    assert Step(1.0, StepKind.FAULT, Target(names=("sim-0001",)), FaultKind("ecc")).describe() == (
        "ecc sim-0001"
    )


def test_describe_names_recoveries_and_restarts() -> None:
    assert Step(1.0, StepKind.RECOVER, Target(every=True)).describe() == "recover all faulty"
    assert Step(1.0, StepKind.RECOVER, Target(rack=0)).describe() == "recover rack 0"
    assert Step(1.0, StepKind.RESTART).describe() == "operator killed"


def test_an_api_server_restart_stops_it_and_starts_it_again_even_past_the_end() -> None:
    steps = plan(
        scenario(
            duration="1m",
            faults=[fault("5s")],
            api_server_restarts=[{"at": "10s", "down": "15s"}, {"at": "50s", "down": "30s"}],
        )
    )

    outage = [(s.at, s.kind) for s in steps if s.kind is not StepKind.FAULT]
    assert outage == [
        (10, StepKind.STOP_API_SERVER),
        (25, StepKind.START_API_SERVER),
        (50, StepKind.STOP_API_SERVER),
        (80, StepKind.START_API_SERVER),
    ]
    assert [s.describe() for s in steps[1:3]] == ["API server stopped", "API server started"]


def test_describe_target_shortens_long_name_lists() -> None:
    three = Target(names=("sim-0001", "sim-0002", "sim-0003"))
    four = Target(names=("sim-0001", "sim-0002", "sim-0003", "sim-0004"))

    assert describe_target(three) == "sim-0001, sim-0002, sim-0003"
    assert describe_target(four) == "sim-0001, sim-0002, sim-0003…"


def test_planned_steps_describe_themselves() -> None:
    steps = plan(
        scenario(
            faults=[fault("10s", "xid 79", nodes=3), fault("20s", "ecc", names=["sim-0007"])],
            recoveries=[{"at": "30s", "all": True}],
        )
    )

    assert [s.describe() for s in steps] == ["xid 79 x3", "ecc sim-0007", "recover all faulty"]
