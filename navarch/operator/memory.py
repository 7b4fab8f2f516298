"""Keeping the operator's resident memory in proportion to the fleet (glibc only).

Two glibc behaviours make a long-running Python operator hold far more memory than it uses:

- **Arenas.** glibc gives each thread that allocates under contention an arena of its own, up
  to eight per core, and memory freed in one arena is not reused by another. The API worker
  threads parse responses of up to megabytes each, so resident memory would grow with the
  number of arenas rather than with the fleet. Two arenas keep it in proportion; the cap must
  be set before any thread starts.
- **Freed pages.** Startup lists every Node and GpuNodeHealth (kopf lists them once more for
  its watches) and judges them all, a peak several times the steady state. glibc keeps the
  freed pages of that peak mapped unless asked to give them back; ``malloc_trim`` does.

On other C libraries both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the most malloc arenas (malloc.h)."""
ARENAS = 2


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_arenas() -> bool:
    """Cap glibc's malloc arenas; whether it took effect."""
    mallopt = getattr(_libc(), "mallopt", None)
    return bool(mallopt(M_ARENA_MAX, ARENAS)) if mallopt is not None else False


def trim() -> bool:
    """Hand freed heap pages back to the system; whether any were. Takes tens of
    milliseconds on a large heap and releases the GIL meanwhile: call it off the event loop."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return bool(malloc_trim(0)) if malloc_trim is not None else False
