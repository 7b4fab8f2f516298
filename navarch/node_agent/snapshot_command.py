"""``navarch-agent snapshot``: collect once and print the status the agent would write.

For debugging on a node: it reads NVML once and the XIDs already in the kernel log, and prints
the agent-owned status keys as YAML, without any cluster. XIDs already reported by a running
agent and those of earlier writes do not matter here, so nothing is merged from a cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from navarch import __version__
from navarch.api import AGENT_STATUS_KEYS
from navarch.node_agent import host
from navarch.node_agent.config import SnapshotConfig
from navarch.node_agent.kmsg import KmsgWatcher
from navarch.node_agent.nvml import NvmlCollector, NvmlSession
from navarch.node_agent.status import AgentIdentity, ResetTracker, build_status
from navarch.node_agent.xid_store import XidStore
from navarch.wire import to_wire


def run(config: SnapshotConfig, out: TextIO) -> int:
    # Only this command prints YAML; the daemon does not pay for importing it.
    import yaml

    now = datetime.now(UTC)
    session = NvmlSession(config.nvml_library)
    collector = NvmlCollector(session)
    try:
        snapshot = collector.collect()
    finally:
        collector.close()
        session.close()
    kmsg = KmsgWatcher(config.kmsg_path)
    try:
        events = kmsg.wait(0)
    finally:
        kmsg.close()
    store = XidStore()
    for event in events:
        store.add(event, snapshot.gpus)
    status = build_status(
        identity=AgentIdentity(version=__version__, boot_id=host.boot_id(), start_time=now),
        snapshot=snapshot,
        gpus=ResetTracker().stamp(snapshot.gpus),
        nvml_error=snapshot.error,
        kmsg_error=kmsg.error,
        expected_gpu_count=config.expected_gpus,
        xids=store.records(),
        last_xid=store.summary(),
        now=now,
    )
    wire = {k: v for k, v in to_wire(status).items() if k in AGENT_STATUS_KEYS}
    yaml.safe_dump(wire, out, sort_keys=False, default_flow_style=False)
    return 0
