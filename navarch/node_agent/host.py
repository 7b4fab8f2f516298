"""Facts about the host the agent runs on."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """The kernel's boot id, which changes on every boot; None when it cannot be read."""
    try:
        with open(path, encoding="ascii") as stream:
            return stream.read().strip() or None
    except OSError as e:
        log.warning("cannot read the boot id from %s: %s; XIDs will not carry over", path, e)
        return None
