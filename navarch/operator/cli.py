"""``navarch-operator``: judges every GpuNodeHealth and keeps its Node in line.

Run one instance. The chart runs a single replica with the Recreate strategy, so two operators
never overlap; ``--peering NAME`` additionally lets kopf's peering pause all but one instance
(it needs kopf's ClusterKopfPeering CRD and an object of that name).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import sys

import kopf

from navarch import __version__
from navarch.errors import ConfigError
from navarch.operator import handlers, kube, metrics

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
DEFAULT_WORKERS = 32
M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the most malloc arenas (malloc.h)."""
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas; whether it took effect (not on other C libraries).

    glibc gives each thread that allocates under contention an arena of its own, up to eight
    per core, and memory freed in one arena is not reused by another. The API worker threads
    parse responses of up to megabytes each, so the operator's resident memory grows with the
    number of arenas rather than with the fleet. Two arenas keep it in proportion. It must run
    before any thread starts.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):
        return False


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


port.__name__ = "port number (0-65535)"
positive.__name__ = "positive integer"


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
        "--health-port",
        type=port,
        default=DEFAULT_HEALTH_PORT,
        metavar="N",
        help=f"serve the liveness probe on http://:N/healthz, 0 to turn off "
        f"(default {DEFAULT_HEALTH_PORT})",
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
    limit_malloc_arenas()
    p = parser()
    args = p.parse_args(argv)
    try:
        configuration = kube.load_configuration(args.kubeconfig)
    except ConfigError as err:
        p.error(str(err))
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    if not args.verbose:
        # kopf logs every handled watch event; at fleet scale that drowns Navarch's own log.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        metrics.serve(args.metrics_port)
    except OSError as err:
        p.error(f"--metrics-port {args.metrics_port}: {err}")
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    log.info("navarch-operator %s starting", __version__)
    kopf.run(
        registry=handlers.registry,
        memo=handlers.Runtime(configuration=configuration, workers=args.workers),
        clusterwide=True,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
