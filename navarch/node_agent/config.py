"""``navarch-agent run`` settings: flags, their environment variables, and validation.

Every setting has a flag and an environment variable; the flag wins. The node name comes from
``NODE_NAME`` (the downward API in the DaemonSet), the others from ``NAVARCH_AGENT_<FLAG>``.
Validation happens once, at start-up: a bad value stops the agent with one message
(``ConfigError``) instead of letting it run half-configured.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from navarch.durations import parse_duration
from navarch.errors import ConfigError
from navarch.node_agent.kmsg import DEFAULT_PATH as DEFAULT_KMSG_PATH
from navarch.serving import TlsFiles, metrics_tls

DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 30.0
DEFAULT_METRICS_PORT = 9101
DEFAULT_HEALTH_PORT = 9102
LOG_LEVELS = ("debug", "info", "warning", "error")

ENV_PREFIX = "NAVARCH_AGENT_"
NODE_NAME_ENV = "NODE_NAME"

# RFC 1123 subdomain: what Kubernetes accepts as a Node name.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MIN_POLL, _MIN_HEARTBEAT, _MAX_INTERVAL = 0.1, 1.0, 3600.0


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    node_name: str
    kubeconfig: str | None
    """None: use the pod's ServiceAccount."""
    poll_interval: float
    heartbeat_interval: float
    kmsg_path: str
    nvml_library: str | None
    """None: the system's libnvidia-ml.so.1, found the normal way."""
    expected_gpus: int | None
    metrics_port: int
    """0: no metrics endpoint."""
    metrics_tls: TlsFiles | None
    """None: metrics in plain HTTP to anyone (``--metrics-insecure``)."""
    health_port: int
    """0: no probe endpoints."""
    log_format: Literal["text", "json"]
    log_level: str


@dataclass(frozen=True, kw_only=True)
class SnapshotConfig:
    """``navarch-agent snapshot``: the sources, no cluster."""

    kmsg_path: str
    nvml_library: str | None
    expected_gpus: int | None


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``run`` and ``snapshot``: where GPU facts come from."""
    parser.add_argument(
        "--kmsg-path",
        help=f"kernel log to read XIDs from (env {ENV_PREFIX}KMSG_PATH; "
        f"default {DEFAULT_KMSG_PATH})",
    )
    parser.add_argument(
        "--nvml-library",
        help=f"NVML library to load (env {ENV_PREFIX}NVML_LIBRARY); "
        "default: libnvidia-ml.so.1 found the normal way",
    )
    parser.add_argument(
        "--expected-gpus",
        help=f"GPUs this node should have (env {ENV_PREFIX}EXPECTED_GPUS); default: the "
        "Node's nvidia.com/gpu capacity, else its nvidia.com/gpu.count label",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``navarch-agent run``; defaults are resolved by :func:`run_config`."""
    parser.add_argument("--node-name", help=f"this node's name (env {NODE_NAME_ENV}; required)")
    parser.add_argument(
        "--kubeconfig",
        help=f"kubeconfig file (env {ENV_PREFIX}KUBECONFIG); default: the pod's ServiceAccount",
    )
    parser.add_argument(
        "--poll-interval",
        help=f"how often to read NVML, in seconds or as a duration like 10s "
        f"(env {ENV_PREFIX}POLL_INTERVAL; default {DEFAULT_POLL_INTERVAL:g})",
    )
    parser.add_argument(
        "--heartbeat-interval",
        help=f"longest time between status writes (env {ENV_PREFIX}HEARTBEAT_INTERVAL; "
        f"default {DEFAULT_HEARTBEAT_INTERVAL:g})",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--metrics-port",
        help=f"port for /metrics, 0 for none "
        f"(env {ENV_PREFIX}METRICS_PORT; default {DEFAULT_METRICS_PORT})",
    )
    parser.add_argument(
        "--metrics-cert-file",
        help=f"TLS certificate for /metrics, which then answers only callers whose token "
        f"may get /metrics (env {ENV_PREFIX}METRICS_CERT_FILE)",
    )
    parser.add_argument(
        "--metrics-key-file",
        help=f"private key of --metrics-cert-file (env {ENV_PREFIX}METRICS_KEY_FILE)",
    )
    parser.add_argument(
        "--metrics-insecure",
        action="store_const",
        const="true",
        help=f"serve /metrics in plain HTTP to anyone instead (env "
        f"{ENV_PREFIX}METRICS_INSECURE=true)",
    )
    parser.add_argument(
        "--health-port",
        help=f"port for the /healthz and /readyz probes in plain HTTP, 0 for none "
        f"(env {ENV_PREFIX}HEALTH_PORT; default {DEFAULT_HEALTH_PORT})",
    )
    parser.add_argument(
        "--log-format", help=f"text or json (env {ENV_PREFIX}LOG_FORMAT; default text)"
    )
    parser.add_argument(
        "--log-level",
        help=f"{', '.join(LOG_LEVELS)} (env {ENV_PREFIX}LOG_LEVEL; default info)",
    )


class _Settings:
    """Each setting from its flag, else its environment variable, else None."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str] | None) -> None:
        self._args = args
        self._env = os.environ if env is None else env

    def __call__(self, flag: str, variable: str | None = None) -> str | None:
        given = getattr(self._args, flag.replace("-", "_"), None)
        if given is not None:
            return str(given)
        found = self._env.get(variable or ENV_PREFIX + flag.upper().replace("-", "_"))
        return found or None


def snapshot_config(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> SnapshotConfig:
    """The validated ``snapshot`` configuration; raises ConfigError."""
    value = _Settings(args, env)
    return SnapshotConfig(
        kmsg_path=value("kmsg-path") or DEFAULT_KMSG_PATH,
        nvml_library=_library(value("nvml-library")),
        expected_gpus=_integer("--expected-gpus", value("expected-gpus"), 0, 1024),
    )


def run_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AgentConfig:
    """The validated ``run`` configuration; raises ConfigError naming the first bad setting."""
    value = _Settings(args, env)
    node_name = value("node-name", NODE_NAME_ENV)
    if node_name is None:
        raise ConfigError("--node-name", f"required (or set {NODE_NAME_ENV})")
    if len(node_name) > 253 or not _NODE_NAME.fullmatch(node_name):
        raise ConfigError("--node-name", f"{node_name!r} is not a valid Kubernetes node name")
    sources = snapshot_config(args, env)
    poll = _interval("--poll-interval", value("poll-interval"), DEFAULT_POLL_INTERVAL, _MIN_POLL)
    heartbeat = _interval(
        "--heartbeat-interval",
        value("heartbeat-interval"),
        DEFAULT_HEARTBEAT_INTERVAL,
        _MIN_HEARTBEAT,
    )
    kubeconfig = value("kubeconfig")
    if kubeconfig is not None and not os.path.isfile(kubeconfig):
        raise ConfigError("--kubeconfig", f"{kubeconfig} does not exist or is not a file")
    port = _integer("--metrics-port", value("metrics-port"), 0, 65535)
    metrics_port = DEFAULT_METRICS_PORT if port is None else port
    health_port = _integer("--health-port", value("health-port"), 0, 65535)
    log_format = (value("log-format") or "text").lower()
    if log_format not in ("text", "json"):
        raise ConfigError("--log-format", f"must be text or json, got {log_format!r}")
    log_level = (value("log-level") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            "--log-level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
        )
    insecure = _boolean("--metrics-insecure", value("metrics-insecure"))
    tls = (
        metrics_tls(value("metrics-cert-file"), value("metrics-key-file"), insecure=insecure)
        if metrics_port
        else None
    )
    return AgentConfig(
        node_name=node_name,
        kubeconfig=kubeconfig,
        poll_interval=poll,
        heartbeat_interval=heartbeat,
        kmsg_path=sources.kmsg_path,
        nvml_library=sources.nvml_library,
        expected_gpus=sources.expected_gpus,
        metrics_port=metrics_port,
        metrics_tls=tls,
        health_port=DEFAULT_HEALTH_PORT if health_port is None else health_port,
        log_format="json" if log_format == "json" else "text",
        log_level=log_level,
    )


def _library(path: str | None) -> str | None:
    if path is not None and not os.path.isfile(path):
        raise ConfigError("--nvml-library", f"{path} does not exist or is not a file")
    return path


def _interval(setting: str, text: str | None, default: float, minimum: float) -> float:
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text).total_seconds()
        except ValueError:
            raise ConfigError(
                setting, f"{text!r} is neither seconds (e.g. 10) nor a duration (e.g. 10s)"
            ) from None
    if not minimum <= seconds <= _MAX_INTERVAL:
        raise ConfigError(
            setting, f"must be between {minimum:g}s and {_MAX_INTERVAL:g}s, got {text!r}"
        )
    return seconds


def _boolean(setting: str, text: str | None) -> bool:
    if text is None or text.lower() == "false":
        return False
    if text.lower() == "true":
        return True
    raise ConfigError(setting, f"must be true or false, got {text!r}")


def _integer(setting: str, text: str | None, minimum: int, maximum: int) -> int | None:
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise ConfigError(setting, f"{text!r} is not a whole number") from None
    if not minimum <= number <= maximum:
        raise ConfigError(setting, f"must be between {minimum} and {maximum}, got {number}")
    return number
