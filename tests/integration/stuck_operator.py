"""``navarch-operator`` with a test hook: once the file ``$NAVARCH_TEST_STUCK_FILE`` exists,
its reconcile loop stops dead in its next pass, as a loop wedged in an await would, while the
process, its event loop and kopf's watches go on."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from navarch.operator import cli
from navarch.operator.reconciler import Reconciler

TRIGGER_ENV = "NAVARCH_TEST_STUCK_FILE"

_reconcile = Reconciler.reconcile


async def reconcile(self: Reconciler) -> None:
    if Path(os.environ[TRIGGER_ENV]).exists():
        await asyncio.Event().wait()
    await _reconcile(self)


if __name__ == "__main__":
    Reconciler.reconcile = reconcile  # type: ignore[method-assign]
    sys.exit(cli.main())
