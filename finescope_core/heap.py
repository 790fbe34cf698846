"""Keep freed memory from piling up in the C library's heap during a pass whose buffers change size phase by phase.

glibc serves an allocation below its mmap threshold from its heap and keeps the memory when it is freed, for reuse.
The threshold adapts: each time a mapped block is freed it rises to that block's size (up to 32 MiB on 64-bit), so
after a few large tensors come and go, tensors of several MiB land in the heap too. Pruning's buffers change size
from one phase to the next (a layer's Gram matrix, its solves, the refinement's rows), so that memory piles up in holes
the next phase cannot use, and the process's resident memory, with its peak, grows by it. Two remedies, each a no-op
where the C library lacks the call: fixed thresholds for the pass (``mapped_large_allocations``), so that a large
tensor's pages go back to the system when it is freed, and ``malloc_trim`` between phases (``release_free_memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
PASS_THRESHOLD = 4 * 2**20  # bytes: larger allocations are mapped, and free memory at the heap's top returned
ADAPTIVE_CEILING = 32 * 2**20  # bytes: the highest mmap threshold glibc's adaptive rule reaches on 64-bit


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _libc_function(name: str):
    """The C library's function ``name``, or None where there is no such library or function."""
    return getattr(_libc(), name, None)


def release_free_memory() -> None:
    """Return the heap's free pages to the operating system (glibc's ``malloc_trim``), where the C library can."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def _environment_threshold(name: str) -> int | None:
    """A threshold the environment gave glibc (``MALLOC_TRIM_THRESHOLD_`` and the like: Dask's nanny, for one, sets
    it for its workers), or None."""
    value = os.environ.get(f"MALLOC_{name}_THRESHOLD_", "")
    return int(value) if value.isdigit() else None


@contextlib.contextmanager
def mapped_large_allocations(threshold: int = PASS_THRESHOLD) -> Iterator[None]:
    """Within the block, memory of ``threshold`` bytes or more goes back to the system when freed: an allocation that
    size is mapped on its own (unless free heap memory already holds it), and free memory of that size at the heap's
    top is trimmed. The setting is the whole process's (glibc has no other). Afterwards the thresholds return to
    what the environment set, or, as glibc's adaptive rule cannot be restored, to where that rule's ceiling puts them
    (mmap 32 MiB, trim twice that), where a long-running process settles anyway."""
    mmap_set, trim_set = _environment_threshold("MMAP"), _environment_threshold("TRIM")
    within = (threshold if given is None else min(threshold, given) for given in (mmap_set, trim_set))
    changed = _set_thresholds(*within)
    try:
        yield
    finally:
        if changed:
            _set_thresholds(ADAPTIVE_CEILING if mmap_set is None else mmap_set,
                            2 * ADAPTIVE_CEILING if trim_set is None else trim_set)
