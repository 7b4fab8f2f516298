"""The kopf shell: watch events feed the index, one startup handler sets everything up.

The watch handlers do nothing but record the object (or its deletion) in the
:class:`~navarch.operator.fleet.Fleet` and so mark its node for the reconcile loop; all the
judging and writing happens there. They hold no state of their own and trust no single event:
the loop re-reads a Node whenever a write conflicts, and timers re-evaluate nodes without any
event at all.

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
from kubernetes import client

from navarch import api
from navarch.errors import ApiError
from navarch.operator.fleet import Fleet
from navarch.operator.kube import Kube
from navarch.operator.reconciler import Reconciler

registry = kopf.OperatorRegistry()

LIST_RETRY_DELAY = 5.0
SHUTDOWN_GRACE = 5.0
"""Seconds given to writes in flight at shutdown; what is cut short is redone on restart."""


@dataclass
class Runtime:
    """What the handlers share; kopf hands it to every handler as ``memo``."""

    configuration: client.Configuration
    workers: int
    fleet: Fleet = field(default_factory=Fleet)
    kube: Kube | None = None
    reconciler: Reconciler | None = None
    loop_task: asyncio.Task[None] | None = None


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


@kopf.on.login(registry=registry)
def login(memo: Runtime, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same configuration as the operator's own client."""
    c = memo.configuration
    header = c.get_api_key_with_prefix("BearerToken") or c.get_api_key_with_prefix("authorization")
    scheme, _space, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=c.host,
        ca_path=c.ssl_ca_cert,
        insecure=not c.verify_ssl,
        username=c.username or None,
        password=c.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=c.cert_file,
        private_key_path=c.key_file,
    )


@kopf.on.startup(registry=registry)
async def start(settings: kopf.OperatorSettings, memo: Runtime, **_: Any) -> None:
    """Configure kopf, read the cluster once, and start the reconcile loop."""
    configure(settings)
    if memo.kube is None:
        memo.kube = Kube(memo.configuration, memo.workers)
    memo.reconciler = Reconciler(memo.fleet, memo.kube)
    # The index starts complete, so the first pass never mistakes a policy or Node that has
    # not been delivered yet for one that does not exist.
    try:
        await memo.reconciler.resync()
    except ApiError as err:
        problem = f"cannot list the cluster: {err}"
        raise kopf.TemporaryError(problem, delay=LIST_RETRY_DELAY) from err
    # Modules, clients and compiled policies live as long as the process: frozen, they are
    # no longer walked by every full collection, each a pause of the event loop.
    gc.collect()
    gc.freeze()
    memo.loop_task = asyncio.create_task(memo.reconciler.run(), name="reconcile loop")


@kopf.on.cleanup(registry=registry)
async def stop(memo: Runtime, **_: Any) -> None:
    if memo.loop_task is not None:
        memo.loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await memo.loop_task
    if memo.reconciler is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(memo.reconciler.drain(), SHUTDOWN_GRACE)
    if memo.kube is not None:
        memo.kube.close()


@kopf.on.probe(id="reconciler", registry=registry)
def alive(memo: Runtime, **_: Any) -> str:
    """Liveness: the reconcile loop must be running."""
    task = memo.loop_task
    if task is None:
        return "starting"
    if task.done():
        raise RuntimeError("the reconcile loop has stopped")
    return "running"


@kopf.on.event("", "v1", "nodes", registry=registry)
async def node_event(event: kopf.RawEvent, memo: Runtime, **_: Any) -> None:
    memo.fleet.feed("node", event.get("type"), event["object"])


@kopf.on.event(api.GROUP, api.VERSION, api.GNH_PLURAL, registry=registry)
async def health_event(event: kopf.RawEvent, memo: Runtime, **_: Any) -> None:
    memo.fleet.feed("health", event.get("type"), event["object"])


@kopf.on.event(api.GROUP, api.VERSION, api.GHP_PLURAL, registry=registry)
async def policy_event(event: kopf.RawEvent, memo: Runtime, **_: Any) -> None:
    memo.fleet.feed("policy", event.get("type"), event["object"])
