"""Go-style durations (``90s``, ``2m``, ``1h30m``, ``500ms``), as policies spell them.

Only the units the CRD's ``DURATION_PATTERN`` admits are accepted, so a value the API server
stores is always one this module parses, and the other way round.
"""

from __future__ import annotations

import re
from datetime import timedelta

from navarch.api import DURATION_PATTERN

_WHOLE = re.compile(DURATION_PATTERN)
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
}


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raise ValueError naming the value and the expected form."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: expected numbers with units ms, s, m or h, "
            "e.g. 90s, 2m, 1h30m, 500ms"
        )
    total = timedelta()
    for number, unit in _PART.findall(text):
        total += float(number) * _UNITS[unit]
    return total


def format_duration(value: timedelta) -> str:
    """Render a duration the way ``parse_duration`` reads it, at second precision (``1h2m3s``).

    Sub-second durations keep milliseconds so short timeouts do not print as ``0s``.
    """
    if value < timedelta(0):
        return "-" + format_duration(-value)
    if timedelta(0) < value < timedelta(seconds=1):
        return f"{value // timedelta(milliseconds=1)}ms"
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs or not out:
        out += f"{secs}s"
    return out
