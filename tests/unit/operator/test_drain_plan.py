"""Which pods a drain evicts, waits for, leaves alone or ignores."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from navarch import api
from navarch.operator.drain_plan import Fate, compile_drain, fate, requests_gpu, select


def pod(
    name: str,
    *,
    gpus: int = 0,
    owner: str | None = "ReplicaSet",
    namespace: str = "work",
    labels: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": labels or {},
    }
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "uid": "u", "controller": True}]
    meta.update(extra.pop("metadata", {}))
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "resources": resources}]},
        "status": extra.pop("status", {"phase": "Running"}),
    }


GPU_PODS = compile_drain(api.DrainSpec())
ALL = compile_drain(api.DrainSpec(pods=api.DrainPods.ALL))


def test_gpu_pods_mode_evicts_gpu_pods_and_leaves_the_others() -> None:
    assert fate(pod("train", gpus=1), GPU_PODS) is Fate.EVICT
    assert fate(pod("web"), GPU_PODS) is Fate.LEAVE
    assert fate(pod("web"), ALL) is Fate.EVICT


@pytest.mark.parametrize(
    "never",
    [
        pod("agent", gpus=1, owner="DaemonSet"),
        pod("static", gpus=1, metadata={"annotations": {"kubernetes.io/config.mirror": "x"}}),
        pod("ours", gpus=1, labels={"app.kubernetes.io/part-of": "navarch"}),
        pod("done", gpus=1, status={"phase": "Succeeded"}),
        pod("failed", gpus=1, status={"phase": "Failed"}),
    ],
    ids=["daemonset", "mirror", "navarch", "succeeded", "failed"],
)
def test_daemonset_mirror_navarch_and_finished_pods_are_never_touched(never: Any) -> None:
    assert fate(never, ALL) is Fate.IGNORE


def test_a_terminating_pod_is_waited_for_and_not_evicted_again() -> None:
    going = pod("train", gpus=1, metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"})
    assert fate(going, GPU_PODS) is Fate.WAIT


def test_excluded_namespaces_and_labels_are_left_alone() -> None:
    rule = compile_drain(
        api.DrainSpec(
            exclude_namespaces=["keep"],
            exclude_pod_selector=api.LabelSelector(match_labels={"stay": "yes"}),
        )
    )
    assert fate(pod("a", gpus=1, namespace="keep"), rule) is Fate.LEAVE
    assert fate(pod("b", gpus=1, labels={"stay": "yes"}), rule) is Fate.LEAVE
    assert fate(pod("c", gpus=1, labels={"stay": "no"}), rule) is Fate.EVICT


def test_pods_no_controller_owns_are_left_unless_the_policy_evicts_them() -> None:
    bare = pod("bare", gpus=1, owner=None)
    assert fate(bare, GPU_PODS) is Fate.UNMANAGED
    forced = compile_drain(api.DrainSpec(unmanaged_pods=api.UnmanagedPods.EVICT))
    assert fate(bare, forced) is Fate.EVICT


def test_configured_gpu_resources_and_requests_count_as_gpu_pods() -> None:
    mig = pod("mig")
    mig["spec"]["initContainers"] = [
        {"name": "i", "resources": {"requests": {"nvidia.com/mig-1g.10gb": "1"}}}
    ]
    assert not requests_gpu(mig, ["nvidia.com/gpu"])
    assert requests_gpu(mig, ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"])
    assert not requests_gpu(pod("zero", gpus=0), ["nvidia.com/gpu"])


def test_selection_groups_pods_in_name_order_and_counts_what_is_left() -> None:
    selection = select(
        [
            pod("b", gpus=1),
            pod("a", gpus=1),
            pod("gone", gpus=1, metadata={"deletionTimestamp": "x"}),
            pod("web"),
            pod("bare", gpus=1, owner=None),
        ],
        GPU_PODS,
    )
    assert [str(p) for p in selection.evict] == ["work/a", "work/b"]
    assert [str(p) for p in selection.left] == ["work/a", "work/b", "work/gone"]
    assert [str(p) for p in selection.left_alone] == ["work/web"]
    assert [str(p) for p in selection.unmanaged] == ["work/bare"]
    assert not selection.done


def test_compiling_parses_durations_and_names_the_bad_field() -> None:
    rule = compile_drain(api.DrainSpec(timeout="5m", grace_period="30s"))
    assert rule.timeout == timedelta(minutes=5)
    assert rule.grace_seconds == 30
    assert compile_drain(api.DrainSpec()).grace_seconds is None
    with pytest.raises(ValueError, match=r"^timeout: "):
        compile_drain(api.DrainSpec(timeout="soon"))
    with pytest.raises(ValueError, match=r"^gracePeriod: "):
        compile_drain(api.DrainSpec(grace_period="1y"))
    with pytest.raises(ValueError, match=r"^gpuResources: "):
        compile_drain(api.DrainSpec(gpu_resources=[]))
