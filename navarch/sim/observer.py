"""Watches the simulated Nodes and notes when Navarch's taint comes and goes on each.

Every watch event is timestamped on arrival, so a latency is the moment the change became
visible to any client of the API server, minus the moment the fault was injected: the honest
end-to-end number an SRE would see. The watcher also keeps the running count of tainted nodes
and its maximum, the figure storm protection must hold below the cap at every moment, and
notes any node that ever carried Navarch's taint twice.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from navarch.backoff import Backoff
from navarch.errors import ApiError
from navarch.node_agent.kube import Credentials, KubeClient

log = logging.getLogger(__name__)

WATCH_SECONDS = 10
"""Short watches: stopping waits for the current one to end, and renewing one is cheap."""
CONNECT_TIMEOUT = 10.0
RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 5.0


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
        self._client = KubeClient(
            credentials, connect_timeout=CONNECT_TIMEOUT, read_timeout=WATCH_SECONDS + 30
        )
        self._selector = selector
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tainted: dict[str, bool] = {}
        self._count = 0
        self.transitions: dict[str, list[tuple[float, bool]]] = {}
        """Per node, (time, tainted) at every change, oldest first."""
        self.max_tainted = 0
        self.doubled: set[str] = set()
        self.watch_errors = 0

    @property
    def tainted(self) -> int:
        with self._lock:
            return self._count

    def start(self) -> None:
        version = self._list()
        self._thread = threading.Thread(
            target=self._run, args=(version,), name="sim-observer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WATCH_SECONDS + 5)
        self._client.close()

    def _list(self) -> str:
        body = self._client.get(_nodes({"labelSelector": self._selector}))
        seen = self._clock()
        for node in body.get("items") or []:
            self._see(node, seen)
        return str(body["metadata"]["resourceVersion"])

    def _run(self, version: str) -> None:
        # While the API server is away (a restart in the scenario), lists back off.
        backoff = Backoff(RETRY_DELAY, MAX_RETRY_DELAY)
        while not self._stop.is_set():
            try:
                version = self._watch(version)
            except (ValueError, ApiError) as err:
                # 410 Gone or a dropped connection: start again from a fresh list.
                self.watch_errors += 1
                log.info("node watch ended (%s); listing again", err)
                time.sleep(backoff.next_delay())
                try:
                    version = self._list()
                except (ValueError, ApiError) as again:
                    log.warning("cannot list nodes: %s", again)
                else:
                    backoff.reset()

    def _watch(self, version: str) -> str:
        query = {
            "labelSelector": self._selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        for event in self._client.watch(_nodes(query)):
            seen = self._clock()
            obj = event["object"]
            version = obj["metadata"]["resourceVersion"]
            if event.get("type") == "DELETED":
                self._forget(obj["metadata"]["name"], seen)
            elif event.get("type") != "BOOKMARK":
                self._see(obj, seen)
            if self._stop.is_set():
                break
        return version

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


def _nodes(query: Mapping[str, str]) -> str:
    return f"/api/v1/nodes?{urllib.parse.urlencode(query)}"
