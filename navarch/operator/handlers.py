"""The kopf shell: watch events feed the index, one startup handler sets everything up.

The watch handlers do nothing but record the object (or its deletion) in the
:class:`~navarch.operator.index.Index`, which marks its node for the reconcile loop; all the
judging and writing happens there. They hold no state of their own and trust no single event:
the loop re-reads a Node whenever a write conflicts, and timers judge nodes again without any
event at all. An object kopf delivers from a fresh listing (event type None) also tells the
loop that kopf listed again, so that it lists too and learns of deletions kopf never reports.

kopf retries every failed request forever, with capped backoff and jitter: by default it gives
up after nine tries, and a watch-stream that gives up on anything but a 429 ends for good
while the operator keeps running. The probes (``health``) catch what retrying cannot.

kopf logs in with the operator's own aiohttp session (``Kube.session``), so kopf's watches and
the operator's calls share one HTTP stack and one connection pool.

kopf itself writes nothing on our objects: there are no change-detecting handlers, so no
progress or diff-base is stored, and were there any, it would go to ``navarch.dev/``
annotations, never to ``status``. Its own Event posting is off; Navarch posts its own Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from navarch import api
from navarch.backoff import Forever
from navarch.errors import ApiError
from navarch.operator.health import Health
from navarch.operator.index import Index
from navarch.operator.kube import Kube
from navarch.operator.reconciler import Reconciler
from navarch.operator.remediator import DEFAULT_NAMESPACE
from navarch.operator.workqueue import WorkQueue

registry = kopf.OperatorRegistry()

LIST_RETRY_DELAY = 5.0
SHUTDOWN_GRACE = 5.0
"""Seconds given to writes in flight at shutdown; what is cut short is redone on restart."""
REQUEST_BACKOFF = Forever(base=0.5, cap=5.0)
"""kopf's retries: a watch comes back within five seconds of the API server."""
WATCH_SCAN_INTERVAL = 2.0
"""How often the watch-state metric is brought up to date."""
WATCHER_TASK = "watcher for "
"""How kopf names the task of each watch-stream: ``watcher for RESOURCE@NAMESPACE``."""


@dataclass
class Runtime:
    """What the handlers share; kopf hands it to every handler as ``memo``."""

    kube: Kube
    health: Health = field(default_factory=Health)
    namespace: str = DEFAULT_NAMESPACE
    """The operator's own namespace, where remediation Jobs run."""
    queue: WorkQueue = field(default_factory=WorkQueue)
    index: Index = field(init=False)
    reconciler: Reconciler | None = None
    loop_task: asyncio.Task[None] | None = None
    scan_task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.index = Index(self.queue)


def kopf_watches() -> set[str]:
    """The resources whose kopf watch-streams run now: a stream that failed has no task."""
    names = (task.get_name() for task in asyncio.all_tasks() if not task.done())
    return {
        name.removeprefix(WATCHER_TASK).rpartition("@")[0]
        for name in names
        if name.startswith(WATCHER_TASK)
    }


async def scan_watches(health: Health) -> None:
    while True:
        health.observe_watches()
        await asyncio.sleep(WATCH_SCAN_INTERVAL)


class SpecDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, without deep-copying what it throws away on every event.

    kopf builds each object's essence on every watch event, even with no change-detecting
    handler. The stock build copies the whole object, then drops ``status`` and all metadata
    but labels and annotations; for a GpuNodeHealth (eight GPUs of readings, and the
    ``managedFields`` describing them) that copy is most of what kopf spends on an event.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        metadata = body.get("metadata") or {}
        slim = {k: v for k, v in body.items() if k not in ("status", "metadata")}
        slim["metadata"] = {k: metadata[k] for k in ("labels", "annotations") if k in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, slim)))


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = SpecDiffBase(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{api.GROUP}/kopf-finalizer"
    settings.posting.enabled = False
    # Watches are renewed every few minutes so a silently dead connection cannot leave the
    # index stale for long; inactivity detection covers the time in between.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.error_backoffs = REQUEST_BACKOFF


@kopf.on.login(registry=registry)
async def login(memo: Runtime, **_: Any) -> kopf.AiohttpSession | None:
    """Hand kopf the operator's own session, so that the process has one HTTP stack and one
    connection pool (async: the session belongs to the event loop)."""
    return memo.kube.session()


@kopf.on.startup(registry=registry)
async def start(settings: kopf.OperatorSettings, memo: Runtime, **_: Any) -> None:
    """Configure kopf, read the cluster once, and start the reconcile loop."""
    configure(settings)
    if memo.reconciler is None:
        memo.reconciler = Reconciler(
            memo.index, memo.queue, memo.kube, health=memo.health, namespace=memo.namespace
        )
    if memo.scan_task is None:
        memo.health.running_watches = kopf_watches
        memo.scan_task = asyncio.create_task(scan_watches(memo.health), name="watch scan")
    # The index starts complete, so the first pass never mistakes a policy or Node that has
    # not been delivered yet for one that does not exist.
    try:
        await memo.reconciler.lister.resync()
    except ApiError as err:
        problem = f"cannot list the cluster: {err}"
        raise kopf.TemporaryError(problem, delay=LIST_RETRY_DELAY) from err
    # Modules, clients and compiled policies live as long as the process: frozen, they are
    # no longer walked by every full collection, each a pause of the event loop.
    gc.collect()
    gc.freeze()
    memo.loop_task = asyncio.create_task(memo.reconciler.run(), name="reconcile loop")
    memo.health.listed = True


@kopf.on.cleanup(registry=registry)
async def stop(memo: Runtime, **_: Any) -> None:
    for task in (memo.scan_task, memo.loop_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if memo.reconciler is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(memo.reconciler.stop(), SHUTDOWN_GRACE)
    await memo.kube.close()


def feed(memo: Runtime, kind: str, event: kopf.RawEvent) -> None:
    event_type = event.get("type")
    if event_type is None and memo.reconciler is not None:
        memo.reconciler.lister.relisted(kind)
    memo.index.feed(kind, event_type, event["object"])


@kopf.on.event("", "v1", "nodes", registry=registry)
async def node_event(event: kopf.RawEvent, memo: Runtime, **_: Any) -> None:
    feed(memo, "node", event)


@kopf.on.event(api.GROUP, api.VERSION, api.GNH_PLURAL, registry=registry)
async def health_event(event: kopf.RawEvent, memo: Runtime, **_: Any) -> None:
    feed(memo, "health", event)


@kopf.on.event(api.GROUP, api.VERSION, api.GHP_PLURAL, registry=registry)
async def policy_event(event: kopf.RawEvent, memo: Runtime, **_: Any) -> None:
    feed(memo, "policy", event)
