"""Keep freed memory from piling up in the C library's heap during a pass whose buffers change size phase by phase.

glibc serves an allocation below its mmap threshold from its heap and keeps the memory when it is freed, for reuse.
The threshold adapts: each time a mapped block is freed it rises to that block's size (up to 32 MiB on 64-bit), so
after a few large tensors come and go, tensors of several MiB land in the heap too. Pruning's buffers change size
from one phase to the next (a layer's Gram matrix, its solves, the refinement's rows), so that memory piles up in holes
the next phase cannot use, and the process's resident memory, with its peak, grows by it. Two remedies, each a no-op
where the C library lacks the call: a fixed threshold for the pass (``mapped_large_allocations``), so that a large
tensor's pages go back to the system when it is freed, and ``malloc_trim`` between phases (``release_free_memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
PASS_MMAP_THRESHOLD = 4 * 2**20  # bytes: larger allocations are mapped, and unmapped when freed
ADAPTIVE_CEILING = 32 * 2**20  # bytes: the highest threshold glibc's adaptive rule reaches on 64-bit


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_free_memory() -> None:
    """Return the heap's free pages to the operating system (glibc's ``malloc_trim``), where the C library can."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _set_mmap_threshold(size: int) -> bool:
    libc = _libc()
    return libc is not None and hasattr(libc, "mallopt") and bool(libc.mallopt(M_MMAP_THRESHOLD, size))


@contextlib.contextmanager
def mapped_large_allocations(threshold: int = PASS_MMAP_THRESHOLD) -> Iterator[None]:
    """Within the block, allocations of ``threshold`` bytes or more are mapped on their own and their pages return
    to the system when freed. A fixed threshold cannot be handed back to glibc's adaptive rule, so afterwards it stays
    at that rule's ceiling (32 MiB), where a long-running process's threshold settles anyway."""
    changed = _set_mmap_threshold(threshold)
    try:
        yield
    finally:
        if changed:
            _set_mmap_threshold(ADAPTIVE_CEILING)
