"""The verdict stage: one node's GpuNodeHealth judged against its policy, as a pure function of
time. ``judge`` turns what the index holds of a node into a :class:`Judgement`.

XIDs are events, health is a state. An XID counts ("is active") until the first of:

* a new boot: the agent keeps the XIDs of the current boot only, so nothing is done here;
* a GPU reset: the GPU's ``resetTime`` (as the agent saw it in NVML) is later than the XID's
  last sighting;
* the policy's XID window has passed since its last sighting;
* an administrator acknowledged it: the ``navarch.dev/acknowledged-before`` annotation on the
  GpuNodeHealth holds an RFC 3339 time at or after its last sighting.

Rules with ``sustainedFor`` count only once they have matched on every judgement for that
long. Until then they are listed in ``verdict.pending`` with the time they began matching; the
next judgement reads that time back from the previous verdict. A judgement that cannot judge
the rules (no status, invalid status, stale heartbeat) ends every pending match.

Nodes no policy judges:

* a GpuNodeHealth without its Node gets verdict Unknown/NodeNotFound;
* a Node no policy selects (policies exist, none matches) is not Navarch's to touch: its
  GpuNodeHealth says Unknown/NotGoverned, and whatever is on the Node stays as it is;
* a governed Node without a GpuNodeHealth is left alone unless it should have one (label
  ``nvidia.com/gpu.present=true``) or Navarch already touched it; then it is judged as
  Unknown/NoStatus, which never quarantines and never releases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from navarch import api
from navarch.durations import format_duration
from navarch.gpu import GpuIdentity
from navarch.nvidia import GPU_PRESENT_LABEL
from navarch.operator.model import HealthView, NodeView, Recorded
from navarch.operator.policy import CompiledPolicy, RuleError, RuleMatch
from navarch.operator.rules import RuleInputs
from navarch.wire import format_time, parse_time
from navarch.xid_catalog import APPLICATION_ACTIONS

MAX_MESSAGE = 1024
"""Verdict messages end up in conditions and Events; a node with many faults must not produce
a message nobody reads to the end."""

MIN_RECHECK = timedelta(seconds=1)
"""A deadline that has just passed must not make the shell judge again in a tight loop."""

_SEVERITY_ORDER = {api.Severity.UNHEALTHY: 0, api.Severity.DEGRADED: 1}


@dataclass(frozen=True)
class Judgement:
    """One node judged: its verdict, and what judging it found besides."""

    name: str
    node: NodeView | None
    recorded: Recorded | None
    """What the operator recorded in the node's GpuNodeHealth; None when it has none."""
    policy: CompiledPolicy | None
    """The policy that judged the node; None when none does (no Node, or none selects it), and
    then nothing is planned for the Node."""
    verdict: api.Verdict
    """``action`` is what the policy asks for; the plan's verdict carries the action actually
    taken (storm protection, dry run, opt-out), and is the one written."""
    previous: api.Verdict | None = None
    """The verdict written last time, which decides transitions."""
    xids_reported_until: datetime | None = None
    """Informational XIDs first seen up to this time have had their Events."""
    rule_errors: tuple[RuleError, ...] = ()
    """Rules that failed on this node; they counted as not matched."""
    informational_xids: tuple[api.XidRecord, ...] = ()
    """Active XIDs whose catalog action is the application's (RESTART_APP, IGNORE, ...): they
    do not change health, but are worth an Event."""
    gpus: tuple[api.GpuStatus, ...] = ()
    """The node's GPUs, kept only when there are informational XIDs to name their GPU."""
    warnings: tuple[str, ...] = ()
    """Problems that did not stop the judgement, e.g. an unparsable acknowledgement."""
    status_error: str | None = None
    """The path-precise problem when the status does not match the API (reason InvalidStatus)."""
    recheck_after: timedelta | None = None
    """Judge again after this long even if nothing changes: the heartbeat deadline, the end of
    a rule's sustainedFor, an active XID leaving the window. The plan adds its own timers; the
    shell waits for the sooner."""


def judge(
    name: str,
    node: NodeView | None,
    health: HealthView | None,
    policy: CompiledPolicy | None,
    now: datetime,
    *,
    remembered: api.Verdict | None,
) -> Judgement | None:
    """Judge one node, or None when there is nothing to judge or write.

    ``policy`` is the one that governs the Node; ``remembered`` the verdict this process gave
    the node last time, which stands in for the persisted one of a Node without a GpuNodeHealth.
    """
    now = _aware(now)
    recorded = health.recorded if health is not None else None
    previous = recorded.verdict if recorded is not None else remembered
    cursors = [
        v.xid_events_until
        for v in (previous, remembered)
        if v is not None and v.xid_events_until is not None
    ]
    judged = functools.partial(
        Judgement,
        name,
        node,
        recorded,
        policy,
        previous=previous,
        xids_reported_until=max(cursors) if cursors else None,
    )
    if node is None or policy is None:
        if health is None:
            return None
        if node is None:
            reason, message = api.Reason.NODE_NOT_FOUND, f"Node {name} does not exist"
        else:
            reason = api.Reason.NOT_GOVERNED
            message = f"no GpuHealthPolicy selects Node {name}; Navarch leaves it as it is"
        return judged(unjudged(reason, message, previous, now))
    if health is None:
        expected = node.labels.get(GPU_PRESENT_LABEL) == "true"
        if not (expected or node.quarantined or node.condition is not None):
            return None
    return _judge(judged, health, node.labels, policy, now=now, previous=previous)


def _judge(
    judged: Callable[..., Judgement],
    health: HealthView | None,
    labels: Mapping[str, str],
    policy: CompiledPolicy,
    *,
    now: datetime,
    previous: api.Verdict | None,
) -> Judgement:
    """Judge a governed node's status; ``judged`` makes the Judgement of a verdict."""
    if health is None or (health.status is None and health.error is None):
        return judged(
            _verdict(
                policy,
                api.Health.UNKNOWN,
                api.Reason.NO_STATUS,
                "the agent has not reported yet",
                now=now,
                previous=previous,
            )
        )
    if health.status is None:
        error = health.error or ""
        verdict = _verdict(
            policy,
            api.Health.UNKNOWN,
            api.Reason.INVALID_STATUS,
            error,
            now=now,
            previous=previous,
        )
        return judged(verdict, status_error=error)

    parsed = health.status
    stale = _stale_heartbeat(parsed.last_heartbeat_time, policy.heartbeat_timeout, now)
    if stale is not None:
        verdict = _verdict(
            policy,
            api.Health.UNKNOWN,
            api.Reason.HEARTBEAT_STALE,
            stale,
            now=now,
            previous=previous,
            fault_time=parsed.last_heartbeat_time,
        )
        return judged(verdict)

    warnings: list[str] = []
    acknowledged = _acknowledged_before(health.annotations, warnings)
    raw_xids = health.facts.get("xids") or []
    active = [
        i
        for i, xid in enumerate(parsed.xids)
        if is_active(xid, parsed.gpus, policy.xid_window, acknowledged, now)
    ]
    inputs = RuleInputs(
        status=parsed,
        xids=[parsed.xids[i] for i in active],
        labels=labels,
        wire_status=health.facts,
        wire_xids=[raw_xids[i] for i in active],
        wire_history=health.wire_history,
        now=now,
    )
    matches, errors = policy.evaluate_rules(inputs)
    counted, pending = _sustain(matches, previous, now)

    if any(m.rule.severity == api.Severity.UNHEALTHY.value for m, _ in counted):
        state = api.Health.UNHEALTHY
    elif counted:
        state = api.Health.DEGRADED
    else:
        state = api.Health.HEALTHY

    if state == api.Health.HEALTHY.value:
        reason = api.Reason.ALL_CHECKS_PASSED
        message = _healthy_message(len(policy.rules), pending, errors)
        fault_time = None
    else:
        reason = api.Reason.RULE_MATCHED
        message = _truncate("; ".join(f"{m.rule.name}: {m.message}" for m, _ in counted))
        fault_time = min(
            m.fault_time or since for m, since in counted if m.rule.severity == state.value
        )

    verdict = _verdict(
        policy, state, reason, message, now=now, previous=previous, fault_time=fault_time
    )
    verdict.rules = [_matched(m, since) for m, since in counted]
    verdict.pending = [_matched(m, since) for m, since in pending]
    informational = tuple(x for x in inputs.xids if x.immediate_action in APPLICATION_ACTIONS)
    return judged(
        verdict,
        rule_errors=tuple(errors),
        informational_xids=informational,
        gpus=tuple(parsed.gpus) if informational else (),
        warnings=tuple(warnings),
        recheck_after=_recheck(parsed, inputs.xids, pending, policy, now),
    )


def unjudged(
    reason: api.Reason, message: str, previous: api.Verdict | None, now: datetime
) -> api.Verdict:
    """The verdict of a node no policy judges: its Node is missing or no policy selects it."""
    since = previous.since if previous and previous.reason == reason.value else None
    return api.Verdict(
        health=api.Health.UNKNOWN,
        action=api.Action.NONE,
        reason=reason.value,
        message=message,
        since=since or now,
    )


def is_active(
    xid: api.XidRecord,
    gpus: Sequence[api.GpuStatus],
    window: timedelta,
    acknowledged_before: datetime | None,
    now: datetime,
) -> bool:
    """Whether an XID still counts towards health (see the module docstring)."""
    seen = xid.last_time or xid.time
    if seen < now - window:
        return False
    if acknowledged_before is not None and seen <= acknowledged_before:
        return False
    gpu = GpuIdentity.of_xid(xid).find(gpus)
    return not (gpu is not None and gpu.reset_time is not None and seen < gpu.reset_time)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stale_heartbeat(last: datetime | None, timeout: timedelta, now: datetime) -> str | None:
    if last is None:
        return "the agent has never reported a heartbeat"
    if now - last <= timeout:
        return None
    # No age in the message: it would change on every judgement, and the condition and verdict
    # written from it with it, so each write's own watch event would cause the next write.
    return (
        f"no heartbeat from the agent since {format_time(last)}, "
        f"longer than heartbeatTimeout {format_duration(timeout)}"
    )


def _acknowledged_before(annotations: Mapping[str, str], warnings: list[str]) -> datetime | None:
    text = annotations.get(api.ACK_ANNOTATION)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        warnings.append(
            f"annotation {api.ACK_ANNOTATION}={text!r} is not an RFC 3339 time and is ignored"
        )
        return None


def _sustain(
    matches: Sequence[RuleMatch], previous: api.Verdict | None, now: datetime
) -> tuple[list[tuple[RuleMatch, datetime]], list[tuple[RuleMatch, datetime]]]:
    """Split matches into counted and pending, each with the time it began matching."""
    began: dict[str, datetime] = {}
    if previous is not None:
        for rule in [*previous.rules, *previous.pending]:
            if rule.since is not None:
                began[rule.name] = rule.since
    counted, pending = [], []
    for match in matches:
        since = min(began.get(match.rule.name, now), now)
        sustained = match.rule.sustained_for
        if sustained is not None and now - since < sustained:
            pending.append((match, since))
        else:
            counted.append((match, since))
    counted.sort(key=lambda item: _SEVERITY_ORDER[api.Severity(item[0].rule.severity)])
    return counted, pending


def _matched(match: RuleMatch, since: datetime) -> api.MatchedRule:
    return api.MatchedRule(
        name=match.rule.name,
        severity=match.rule.severity,
        message=match.message,
        since=since,
        gpus=list(match.gpus),
        actions=list(match.actions),
    )


def _verdict(
    policy: CompiledPolicy,
    health: api.Health,
    reason: api.Reason,
    message: str,
    *,
    now: datetime,
    previous: api.Verdict | None,
    fault_time: datetime | None = None,
) -> api.Verdict:
    unchanged = previous is not None and previous.health == health
    since = previous.since if unchanged and previous is not None else None
    if fault_time is not None and unchanged and previous is not None and previous.fault_time:
        # While the node stays in the same state the fault keeps its first time, so storm
        # ordering and fault-to-action latency do not reset when the set of faults shifts.
        fault_time = min(fault_time, previous.fault_time)
    action = policy.action_for(health, reason)
    return api.Verdict(
        health=health,
        action=action_name(action.taint != api.TaintEffect.NONE.value, action.cordon),
        reason=reason.value,
        message=message,
        policy=policy.name,
        since=since or now,
        fault_time=fault_time,
    )


def action_name(taint: bool, cordon: bool) -> api.Action:
    """The verdict's action for a quarantine of a taint, a cordon, both or neither."""
    if taint and cordon:
        return api.Action.TAINT_AND_CORDON
    if taint:
        return api.Action.TAINT
    if cordon:
        return api.Action.CORDON
    return api.Action.NONE


def _healthy_message(
    rules: int, pending: Sequence[tuple[RuleMatch, datetime]], errors: Sequence[RuleError]
) -> str:
    message = f"all {rules} rules passed"
    for match, since in pending:
        sustained = match.rule.sustained_for or timedelta(0)
        message += (
            f"; {match.rule.name} matching since {format_time(since)}, counts after "
            f"{format_duration(sustained)}: {match.message}"
        )
    if errors:
        names = ", ".join(e.rule for e in errors)
        message += f"; could not evaluate {names}"
    return _truncate(message)


def _truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[: MAX_MESSAGE - 1] + "…"


def _recheck(
    status: api.GpuNodeHealthStatus,
    active_xids: Sequence[api.XidRecord],
    pending: Sequence[tuple[RuleMatch, datetime]],
    policy: CompiledPolicy,
    now: datetime,
) -> timedelta | None:
    deadlines: list[datetime] = []
    if status.last_heartbeat_time is not None:
        deadlines.append(status.last_heartbeat_time + policy.heartbeat_timeout)
    for match, since in pending:
        if match.rule.sustained_for is not None:
            deadlines.append(since + match.rule.sustained_for)
    deadlines.extend((x.last_time or x.time) + policy.xid_window for x in active_xids)
    if not deadlines:
        return None
    return max(min(deadlines) - now, MIN_RECHECK)
