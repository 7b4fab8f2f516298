"""Watches the simulated Nodes and notes when Navarch's taint comes and goes on each.

Every watch event is timestamped on arrival, so a latency is the moment the change became
visible to any client of the API server, minus the moment the fault was injected: the honest
end-to-end number an SRE would see. The watcher also keeps the running count of tainted nodes
and its maximum, the figure storm protection must hold below the cap at every moment, and
notes any node that ever carried Navarch's taint twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from navarch.node_agent.kube import Credentials
from navarch.sim.watch import Follower, Objects


def navarch_taints(node: Mapping[str, Any], key: str) -> int:
    return sum(1 for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") == key)


class TaintObserver:
    """Follows the taint ``key`` on the Nodes selected by ``selector``."""

    def __init__(
        self,
        credentials: Credentials,
        selector: str,
        key: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._tainted: dict[str, bool] = {}
        self._count = 0
        self.transitions: dict[str, list[tuple[float, bool]]] = {}
        """Per node, (time, tainted) at every change, oldest first."""
        self.max_tainted = 0
        self.doubled: set[str] = set()
        self._follower = Follower(
            credentials,
            "/api/v1/nodes",
            {"labelSelector": selector},
            on_list=self._listed,
            on_event=self._event,
            name="sim-observer",
            clock=clock,
        )

    @property
    def tainted(self) -> int:
        with self._lock:
            return self._count

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def _listed(self, nodes: Objects, seen: float) -> None:
        for node in nodes:
            self._see(node, seen)

    def _event(self, kind: str, node: Mapping[str, Any], seen: float) -> None:
        if kind == "DELETED":
            self._forget(node["metadata"]["name"], seen)
        else:
            self._see(node, seen)

    def _see(self, node: Mapping[str, Any], at: float) -> None:
        name = node["metadata"]["name"]
        count = navarch_taints(node, self._key)
        self._set(name, count > 0, at)
        if count > 1:
            with self._lock:
                self.doubled.add(name)

    def _forget(self, name: str, at: float) -> None:
        self._set(name, False, at)

    def _set(self, name: str, tainted: bool, at: float) -> None:
        with self._lock:
            if self._tainted.get(name, False) == tainted:
                self._tainted.setdefault(name, tainted)
                return
            self._tainted[name] = tainted
            self._count += 1 if tainted else -1
            self.transitions.setdefault(name, []).append((at, tainted))
            self.max_tainted = max(self.max_tainted, self._count)

    def first_change(self, name: str, tainted: bool, after: float) -> float | None:
        """When ``name`` next became (un)tainted at or after ``after``, if it did."""
        with self._lock:
            for at, state in self.transitions.get(name, []):
                if at >= after and state == tainted:
                    return at
        return None

    def is_tainted(self, name: str) -> bool:
        with self._lock:
            return self._tainted.get(name, False)
