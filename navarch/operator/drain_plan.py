"""Which pods a drain moves off a node, and which it leaves alone: pure, from the pods' JSON.

A drain follows ``kubectl drain``'s rules and adds the GPU-only mode users of GPU fleets ask
for. Always left alone, whatever the policy says: DaemonSet pods (their controller would put
them straight back, and the taint tolerations they carry keep them there), mirror pods (the
kubelet owns them; the API can only delete their mirror), Navarch's own pods (the agent reports
the node's recovery), and pods already terminating (evicting them again does nothing, which is
also what makes a resumed drain safe). Finished pods hold no GPU and are not counted at all.

The policy then narrows the rest: GPU pods only, namespaces and a label selector excluded, and
pods that no controller owns left in place unless the policy says to evict them, because
nothing recreates them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from navarch import api
from navarch.durations import parse_duration

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class DrainRule:
    """A policy's ``drain`` with its durations parsed."""

    pods: api.DrainPods
    gpu_resources: frozenset[str]
    timeout: timedelta
    grace_period: timedelta | None
    exclude_namespaces: frozenset[str]
    exclude_labels: Mapping[str, str]
    on_timeout: api.DrainTimeoutAction
    unmanaged: api.UnmanagedPods

    @property
    def grace_seconds(self) -> int | None:
        if self.grace_period is None:
            return None
        return int(self.grace_period.total_seconds())


def compile_drain(spec: api.DrainSpec) -> DrainRule:
    """The drain rule of ``spec``; ValueError names the field at fault, e.g. ``timeout: ...``."""
    try:
        timeout = parse_duration(spec.timeout)
    except ValueError as err:
        raise ValueError(f"timeout: {err}") from err
    grace = None
    if spec.grace_period is not None:
        try:
            grace = parse_duration(spec.grace_period)
        except ValueError as err:
            raise ValueError(f"gracePeriod: {err}") from err
    if not spec.gpu_resources and spec.pods == api.DrainPods.GPU_PODS:
        raise ValueError("gpuResources: GpuPods mode needs at least one resource name")
    selector = spec.exclude_pod_selector
    return DrainRule(
        pods=spec.pods,
        gpu_resources=frozenset(spec.gpu_resources),
        timeout=timeout,
        grace_period=grace,
        exclude_namespaces=frozenset(spec.exclude_namespaces),
        exclude_labels=dict(selector.match_labels) if selector is not None else {},
        on_timeout=spec.on_timeout,
        unmanaged=spec.unmanaged_pods,
    )


class Fate(enum.Enum):
    """What a drain does with one pod."""

    EVICT = "evict"
    WAIT = "wait"
    """Terminating already: the drain waits for it to go."""
    LEAVE = "leave"
    """In place by the policy's choice: counted and reported."""
    UNMANAGED = "unmanaged"
    """Owned by no controller and left in place: counted, reported and warned about."""
    IGNORE = "ignore"
    """Never the drain's business: DaemonSet, mirror, Navarch's own, finished."""


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Selection:
    """A node's pods sorted by what the drain does with them."""

    evict: tuple[PodRef, ...]
    waiting: tuple[PodRef, ...]
    left_alone: tuple[PodRef, ...]
    unmanaged: tuple[PodRef, ...]

    @property
    def left(self) -> tuple[PodRef, ...]:
        """The pods the drain still has to see gone."""
        return self.evict + self.waiting

    @property
    def done(self) -> bool:
        return not self.evict and not self.waiting


def ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(
        str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", ""))
    )


def requests_gpu(pod: Mapping[str, Any], resources: Iterable[str]) -> bool:
    """Whether any container of the pod asks for one of ``resources`` (limits or requests:
    an extended resource may be given as a limit alone)."""
    wanted = set(resources)
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    for container in containers:
        needs = container.get("resources") or {}
        for amounts in (needs.get("limits") or {}, needs.get("requests") or {}):
            if any(_positive(amounts.get(name)) for name in wanted):
                return True
    return False


def _positive(quantity: Any) -> bool:
    if quantity is None:
        return False
    try:
        return float(str(quantity)) > 0
    except ValueError:
        # Extended resources are whole numbers; anything else set is a request all the same.
        return True


def _controller(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((o for o in owners if o.get("controller")), None)


def fate(pod: Mapping[str, Any], rule: DrainRule) -> Fate:
    meta = pod.get("metadata") or {}
    controller = _controller(pod)
    if (
        (pod.get("status") or {}).get("phase") in FINISHED
        or MIRROR_ANNOTATION in (meta.get("annotations") or {})
        or (controller is not None and controller.get("kind") == "DaemonSet")
        or (meta.get("labels") or {}).get(api.PART_OF_LABEL) == api.PART_OF
    ):
        return Fate.IGNORE
    if rule.pods == api.DrainPods.GPU_PODS and not requests_gpu(pod, rule.gpu_resources):
        return Fate.LEAVE
    if meta.get("deletionTimestamp"):
        return Fate.WAIT
    labels = meta.get("labels") or {}
    if meta.get("namespace") in rule.exclude_namespaces or (
        rule.exclude_labels and all(labels.get(k) == v for k, v in rule.exclude_labels.items())
    ):
        return Fate.LEAVE
    if controller is None and rule.unmanaged == api.UnmanagedPods.LEAVE:
        return Fate.UNMANAGED
    return Fate.EVICT


def select(pods: Iterable[Mapping[str, Any]], rule: DrainRule) -> Selection:
    """The node's pods sorted by fate, each group in namespace/name order."""
    groups: dict[Fate, list[PodRef]] = {f: [] for f in Fate}
    for pod in pods:
        groups[fate(pod, rule)].append(ref(pod))
    ordered = {f: tuple(sorted(refs, key=str)) for f, refs in groups.items()}
    return Selection(
        evict=ordered[Fate.EVICT],
        waiting=ordered[Fate.WAIT],
        left_alone=ordered[Fate.LEAVE],
        unmanaged=ordered[Fate.UNMANAGED],
    )
