"""A list-then-watch loop on one collection, each event timestamped on arrival.

The simulator's taint, pod and GpuNodeHealth observers and its Job controller all follow their
collections this way: a list, then short watches from its resource version, and a fresh list
after a watch ends in error (410 Gone, a dropped connection, an API server that is
restarting), backing off while the server is away. What the events mean is the caller's:
``on_list`` gets every object of a list, ``on_event`` each watch event, both with the time seen.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
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

Objects = Sequence[Mapping[str, Any]]


class Follower:
    """Follows ``collection`` (a path without a query), filtered by ``query``."""

    def __init__(
        self,
        credentials: Credentials,
        collection: str,
        query: Mapping[str, str],
        *,
        on_list: Callable[[Objects, float], None],
        on_event: Callable[[str, Mapping[str, Any], float], None],
        name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = KubeClient(
            credentials, connect_timeout=CONNECT_TIMEOUT, read_timeout=WATCH_SECONDS + 30
        )
        self._collection = collection
        self._query = dict(query)
        self._on_list = on_list
        self._on_event = on_event
        self._name = name
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watch_errors = 0

    def start(self) -> None:
        """List once (raising if the server does not answer), then watch in a thread."""
        version = self._list()
        self._thread = threading.Thread(
            target=self._run, args=(version,), name=self._name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WATCH_SECONDS + 5)
        self._client.close()

    def _list(self) -> str:
        body = self._client.get(self._path(self._query))
        self._on_list(body.get("items") or [], self._clock())
        return str(body["metadata"]["resourceVersion"])

    def _run(self, version: str) -> None:
        backoff = Backoff(RETRY_DELAY, MAX_RETRY_DELAY)
        while not self._stop.is_set():
            try:
                version = self._watch(version)
            except (ValueError, ApiError) as err:
                self.watch_errors += 1
                log.info("%s: watch ended (%s); listing again", self._name, err)
                time.sleep(backoff.next_delay())
                try:
                    version = self._list()
                except (ValueError, ApiError) as again:
                    log.warning("%s: cannot list: %s", self._name, again)
                else:
                    backoff.reset()

    def _watch(self, version: str) -> str:
        query = {
            **self._query,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        for event in self._client.watch(self._path(query)):
            seen = self._clock()
            obj = event["object"]
            version = obj["metadata"]["resourceVersion"]
            kind = str(event.get("type"))
            if kind != "BOOKMARK":
                self._on_event(kind, obj, seen)
            if self._stop.is_set():
                break
        return version

    def _path(self, query: Mapping[str, str]) -> str:
        return f"{self._collection}?{urllib.parse.urlencode(query)}" if query else self._collection
