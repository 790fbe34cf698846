"""Hand the heap's free pages back to the operating system.

glibc keeps the memory of freed mid-sized allocations (tensors under its adaptive mmap threshold) in its heap for
reuse. In a pass whose buffers change size from one phase to the next, as pruning's do layer by layer, that free
memory piles up in holes the next phase cannot use, and the process's resident memory, with its peak, grows by it.
``malloc_trim`` returns those pages; where the C library has no such call it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_free_memory() -> None:
    """Return the heap's free pages to the operating system (glibc's ``malloc_trim``), where the C library can."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
