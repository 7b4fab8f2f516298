"""Per-policy limits on nodes doing something at once (draining, remediating), first come
first served."""

from __future__ import annotations

from datetime import datetime


class Slots:
    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}
        """Nodes holding a slot, by policy."""
        self._queued: dict[str, tuple[datetime, str]] = {}
        """Nodes waiting for a slot: since when, and their policy."""

    def take(self, node: str, policy: str) -> None:
        """Hold a slot without waiting: a node that held one before a restart keeps it."""
        self._queued.pop(node, None)
        self._holders.setdefault(policy, set()).add(node)

    def try_take(self, node: str, policy: str, limit: int, now: datetime) -> bool:
        """Take a slot if one is free and no node that asked earlier is still waiting for it;
        otherwise queue (once) and say no."""
        holders = self._holders.setdefault(policy, set())
        if node in holders:
            return True
        self._queued.setdefault(node, (now, policy))
        waiting = sorted((t, n) for n, (t, p) in self._queued.items() if p == policy)
        free = limit - len(holders)
        if free > 0 and node in {n for _, n in waiting[:free]}:
            self.take(node, policy)
            return True
        return False

    def held(self, policy: str) -> int:
        return len(self._holders.get(policy, ()))

    def leave(self, node: str) -> None:
        for holders in self._holders.values():
            holders.discard(node)
        self._queued.pop(node, None)
