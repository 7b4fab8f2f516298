"""The CRDs on a real API server: schema, validation, printer columns, explain, round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from navarch import api
from navarch.wire import from_wire, to_wire

from .cluster import Cluster, unique


def gnh_manifest(name: str, node_name: str | None = None) -> str:
    return json.dumps(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.GNH_KIND,
            "metadata": {"name": name},
            "spec": {"nodeName": node_name or name},
        }
    )


def full_status() -> api.GpuNodeHealthStatus:
    at = datetime(2026, 11, 28, 12, 0, 1, 250000, tzinfo=UTC)
    return api.GpuNodeHealthStatus(
        agent=api.AgentInfo(
            version="0.1.0",
            driver_version="550.54.15",
            cuda_version="12.4",
            nvml_version="12.550.54.15",
            boot_id="6f1c",
            start_time=at,
        ),
        last_heartbeat_time=at,
        gpu_count=1,
        expected_gpu_count=2,
        gpus=[
            api.GpuStatus(
                index=0,
                uuid="GPU-0",
                name="NVIDIA H100 80GB HBM3",
                pci_bus_id="0000:3b:00.0",
                temperature_c=71,
                power_watts=312.5,
                power_limit_watts=700.0,
                memory_used_mib=1024,
                memory_total_mib=81559,
                utilization_percent=97,
                throttle_reasons=["HwSlowdown"],
                ecc=api.EccCounters(enabled=True, volatile_uncorrected=2, aggregate_corrected=9),
                row_remapping=api.RowRemapping(correctable=1, uncorrectable=0, pending=True),
                nvlinks=[api.NvLinkState(link=0, active=False, replay_errors=3)],
                pcie_replays=4,
                error="GPU_IS_LOST: GPU is lost",
            )
        ],
        xids=[
            api.XidRecord(
                code=79,
                time=at,
                last_time=at,
                count=3,
                gpu_index=0,
                pci_bus_id="0000:3b:00.0",
                source="kmsg",
                mnemonic="GPU_HAS_FALLEN_OFF_THE_BUS",
                immediate_action="RESET_GPU",
                message="GPU has fallen off the bus.",
            )
        ],
        last_xid="79 GPU_HAS_FALLEN_OFF_THE_BUS on GPU 0",
        verdict=api.Verdict(
            health="Unhealthy",
            action="Taint",
            reason="RuleMatched",
            rules=[api.MatchedRule(name="gpu-error", severity="Unhealthy", message="GPU 0 lost")],
            since=at,
        ),
        conditions=[
            api.Condition(
                type="Healthy", status="False", reason="RuleMatched", last_transition_time=at
            )
        ],
    )


def test_both_crds_are_established_with_short_names(crds: Cluster) -> None:
    names = crds.kubectl("api-resources", "--api-group=navarch.dev", "-o", "wide").stdout
    assert "gpunodehealths" in names and "gnh" in names
    assert "gpuhealthpolicies" in names and "ghp" in names


def test_gnh_shows_printer_columns(crds: Cluster) -> None:
    name = unique("node-cols")
    crds.kubectl("create", "-f", "-", stdin=gnh_manifest(name))
    status = {"status": to_wire(full_status())}
    status["status"]["verdict"].update(phase="Remediating", step="gpu-reset (attempt 1)")
    status["status"]["drain"] = {"phase": "Drained", "action": "unhealthy"}
    crds.kubectl(
        "patch", "gnh", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    table = crds.kubectl("get", "gnh", name).stdout.splitlines()
    header = table[0].split()
    assert header == [
        "NAME",
        "GPUS",
        "HEALTH",
        "ACTION",
        "PHASE",
        "REASON",
        "DRAIN",
        "LAST",
        "XID",
        "HEARTBEAT",
        "AGE",
    ]
    row = table[1].split()
    assert row[:7] == [name, "1", "Unhealthy", "Taint", "Remediating", "RuleMatched", "Drained"]
    assert "GPU_HAS_FALLEN_OFF_THE_BUS" in table[1]
    wide = crds.kubectl("get", "gnh", name, "-o", "wide").stdout
    assert "STEP" in wide.splitlines()[0] and "gpu-reset (attempt 1)" in wide


def test_node_name_different_from_object_name_is_rejected(crds: Cluster) -> None:
    result = crds.kubectl(
        "create", "-f", "-", stdin=gnh_manifest(unique("a"), "other-node"), check=False
    )
    assert result.returncode != 0
    assert "spec.nodeName must equal metadata.name" in result.stderr


def test_wrong_types_are_rejected_with_the_field_path(crds: Cluster) -> None:
    manifest = json.loads(gnh_manifest(unique("types")))
    manifest["spec"]["nodeName"] = 7
    result = crds.kubectl("create", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "spec.nodeName" in result.stderr and "string" in result.stderr

    name = unique("status-types")
    crds.kubectl("create", "-f", "-", stdin=gnh_manifest(name))
    bad = {
        "status": {
            "gpuCount": "eight",
            "gpus": [{"index": -1}],
            "verdict": {"health": "Healthy", "action": "Explode", "reason": "AllChecksPassed"},
        }
    }
    result = crds.kubectl(
        "patch",
        "gnh",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(bad),
        check=False,
    )
    assert result.returncode != 0
    assert "status.gpuCount" in result.stderr
    assert "status.gpus[0].index" in result.stderr
    assert "status.verdict.action" in result.stderr


def test_explain_prints_field_descriptions(crds: Cluster) -> None:
    out = crds.kubectl("explain", "gnh.status").stdout
    assert "Facts written by the node agent" in out
    assert "lastHeartbeatTime" in out and "refreshed at least every heartbeat interval" in out
    out = crds.kubectl("explain", "ghp.spec.maxUnhealthy").stdout
    assert "Storm protection" in out


def test_status_round_trips_through_the_api_server_unchanged(crds: Cluster) -> None:
    name = unique("roundtrip")
    crds.kubectl("create", "-f", "-", stdin=gnh_manifest(name))
    written = full_status()
    crds.kubectl(
        "patch",
        "gnh",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": to_wire(written)}),
    )
    stored = crds.get_json("gnh", name)["status"]
    assert stored["lastHeartbeatTime"] == "2026-11-28T12:00:01.250000Z"
    assert from_wire(api.GpuNodeHealthStatus, stored) == written
