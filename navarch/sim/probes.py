"""What the simulator measures besides taints: a process's CPU and memory, and the API server's
request counters.

CPU and resident memory come from ``/proc/<pid>``, the same numbers ``top`` shows. Request
counts come from the API server's own ``apiserver_request_total`` counter, which sees every
client (agents, operator, the simulator itself), so rates are the server's load, not an
estimate from one side. A restarted API server counts from zero again; the counts before its
restart carry over (what it served between the last reading and its stop is lost).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import urllib3

from navarch.errors import ApiError
from navarch.node_agent.kube import Credentials, TokenSource, connection_pool

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
_REQUESTS = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT = 10.0
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after its last ")" do not.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    return int(text.split()[1]) * _PAGE / 2**20


def request_key(labels: dict[str, str]) -> str:
    """``PATCH nodes``, ``PATCH gpunodehealths/status``: how the rates are broken down."""
    resource = labels.get("resource", "")
    if labels.get("subresource"):
        resource += "/" + labels["subresource"]
    return f"{labels.get('verb', '?')} {resource or labels.get('group', '?')}"


def parse_request_counts(text: str) -> Counter[str]:
    """Requests served so far by ``request_key``, from the API server's metrics text."""
    counts: Counter[str] = Counter()
    for labels, value in _REQUESTS.findall(text):
        counts[request_key(dict(_LABEL.findall(labels)))] += int(float(value))
    return counts


class RunningTotals:
    """Totals of counters that start from zero again when their process restarts."""

    def __init__(self) -> None:
        self._carried: Counter[str] = Counter()
        self._last: Counter[str] = Counter()

    def add(self, counts: Counter[str]) -> Counter[str]:
        """The totals given the counters' values now."""
        if any(counts[key] < value for key, value in self._last.items()):
            self._carried += self._last
        self._last = counts
        return self._carried + counts


class RequestCounter:
    """Reads the API server's request counters with the simulator's credentials."""

    def __init__(self, credentials: Credentials) -> None:
        self._url = credentials.server + "/metrics"
        self._tokens = TokenSource(credentials.token, credentials.token_file)
        self._pool = connection_pool(credentials, TIMEOUT, TIMEOUT)
        self._totals = RunningTotals()

    def read(self) -> Counter[str] | None:
        """The counts now; None when the metrics cannot be read (no permission, no server)."""
        try:
            token = self._tokens.current()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = self._pool.request("GET", self._url, headers=headers)
        except (urllib3.exceptions.HTTPError, ApiError):
            return None
        if response.status != 200:
            return None
        return self._totals.add(parse_request_counts(response.data.decode(errors="replace")))

    def close(self) -> None:
        self._pool.clear()
