"""``navarch-operator``: judges every GpuNodeHealth and keeps its Node in line.

Run one instance. The chart runs a single replica with the Recreate strategy, so two operators
never overlap; ``--peering NAME`` additionally lets kopf's peering pause all but one instance
(it needs kopf's ClusterKopfPeering CRD and an object of that name).
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from navarch import __version__, serving
from navarch.errors import ConfigError
from navarch.operator import handlers, kube, memory, metrics

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
    memory.limit_arenas()
    p = parser()
    args = p.parse_args(argv)
    try:
        tls = None
        if args.metrics_port:
            tls = serving.metrics_tls(
                args.metrics_cert_file, args.metrics_key_file, insecure=args.metrics_insecure
            )
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
    if args.metrics_port:
        try:
            metrics.serve(args.metrics_port, tls, configuration)
        except ConfigError as err:
            p.error(str(err))
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
