"""The glibc memory controls: this suite runs on glibc Linux, where both take effect."""

from __future__ import annotations

from navarch.operator import memory


def test_malloc_arenas_are_capped_on_glibc() -> None:
    assert memory.limit_arenas()


def test_trim_hands_freed_pages_back_after_a_large_free() -> None:
    # Mid-sized blocks come from glibc's heap, not Python's small-object allocator. With one
    # block kept above them, freeing them cannot shrink the heap from the top: only a trim
    # hands their pages back.
    blocks = [bytearray(4000) for _ in range(20000)]
    pin = bytearray(4000)
    del blocks
    assert memory.trim()
    assert len(pin) == 4000
