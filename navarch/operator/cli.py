"""``navarch-operator``: judges every GpuNodeHealth and keeps its Node in line.

Run one instance. The chart runs a single replica with the Recreate strategy, so two operators
never overlap; ``--peering NAME`` additionally lets kopf's peering pause all but one instance
(it needs kopf's ClusterKopfPeering CRD and an object of that name).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
from datetime import timedelta

import kopf

from navarch import __version__, serving
from navarch.errors import ConfigError
from navarch.operator import handlers, health, kube, memory, metrics, probes, reconciler
from navarch.operator.remediator import DEFAULT_NAMESPACE

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
DEFAULT_WORKERS = 32


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


MIN_STALL_TIMEOUT = 3 * reconciler.IDLE_WAIT.total_seconds()
"""The loop passes at least once per idle pulse: a shorter bound would fail a healthy one."""


def stall_timeout(text: str) -> float:
    value = float(text)
    if not MIN_STALL_TIMEOUT <= value < float("inf"):
        raise ValueError(text)
    return value


port.__name__ = "port number (0-65535)"
positive.__name__ = "positive integer"
stall_timeout.__name__ = f"number of seconds, at least {MIN_STALL_TIMEOUT:g}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="navarch-operator", description=__doc__.splitlines()[0])
    p.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig to use; default: in-cluster config in a Pod, else $KUBECONFIG or "
        "~/.kube/config",
    )
    p.add_argument(
        "--metrics-port",
        type=port,
        default=DEFAULT_METRICS_PORT,
        metavar="N",
        help=f"serve Prometheus metrics on this port, 0 to turn off "
        f"(default {DEFAULT_METRICS_PORT})",
    )
    p.add_argument(
        "--metrics-cert-file",
        metavar="PATH",
        help="TLS certificate for /metrics, which then answers only callers whose token may "
        "get /metrics (checked with TokenReview and SubjectAccessReview)",
    )
    p.add_argument("--metrics-key-file", metavar="PATH", help="private key of --metrics-cert-file")
    p.add_argument(
        "--metrics-insecure",
        action="store_true",
        help="serve /metrics in plain HTTP to anyone instead",
    )
    p.add_argument(
        "--health-port",
        type=port,
        default=DEFAULT_HEALTH_PORT,
        metavar="N",
        help=f"serve the liveness probe on http://:N/healthz and the readiness probe on "
        f"/readyz, 0 to turn off (default {DEFAULT_HEALTH_PORT})",
    )
    default_stall = health.DEFAULT_STALL_TIMEOUT.total_seconds()
    p.add_argument(
        "--stall-timeout",
        type=stall_timeout,
        default=default_stall,
        metavar="SECONDS",
        help="fail the liveness probe when the reconcile loop has made no progress, or a watch "
        f"has not been live, for this long (default {default_stall:g})",
    )
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        help="the operator's namespace, where remediation Jobs run and their ConfigMaps are "
        f"(default: $POD_NAMESPACE, else {DEFAULT_NAMESPACE})",
    )
    p.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other instances through kopf peering object NAME "
        "(default: standalone, one instance)",
    )
    p.add_argument(
        "--workers",
        type=positive,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"concurrent Kubernetes API calls (default {DEFAULT_WORKERS})",
    )
    p.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log format (default text)"
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    memory.limit_arenas()
    p = parser()
    args = p.parse_args(argv)
    try:
        tls = None
        if args.metrics_port:
            tls = serving.metrics_tls(
                args.metrics_cert_file, args.metrics_key_file, insecure=args.metrics_insecure
            )
        # Read once here, so that unusable credentials stop the operator with one message.
        kube.credentials(args.kubeconfig)
    except ConfigError as err:
        p.error(str(err))
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    if not args.verbose:
        # kopf logs every handled watch event; at fleet scale that drowns Navarch's own log.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    runtime = handlers.Runtime(
        kube=kube.Kube(functools.partial(kube.credentials, args.kubeconfig), args.workers),
        health=health.Health(timedelta(seconds=args.stall_timeout)),
        namespace=args.namespace,
    )
    metrics.RECONCILE_AGE.set_function(runtime.health.reconcile_age)
    log.info("navarch-operator %s starting", __version__)
    try:
        # kopf stops by cancelling its tasks, this one's among them.
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(operate(runtime, args, tls))
    except ConfigError as err:
        p.error(str(err))
    return 0


async def operate(
    runtime: handlers.Runtime, args: argparse.Namespace, tls: serving.TlsFiles | None
) -> None:
    """Serve metrics and the probes, and run kopf until it stops."""
    if args.metrics_port:
        reviews = metrics.LoopReviews(runtime.kube.review, asyncio.get_running_loop())
        metrics.serve(args.metrics_port, tls, reviews)
    runner = None
    if args.health_port:
        check = runtime.health
        runner = await probes.serve(args.health_port, check.alive, check.ready)
    try:
        await kopf.operator(
            registry=handlers.registry,
            memo=runtime,
            clusterwide=True,
            standalone=args.peering is None,
            peering_name=args.peering,
        )
    finally:
        if runner is not None:
            await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
