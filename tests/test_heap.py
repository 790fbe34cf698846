"""Large buffers freed during pruning go back to the system, however high glibc's adaptive threshold has climbed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from finescope_core import heap
from finescope_core.heap import _libc_function

# Run in a fresh process each time (mallopt changes the whole process, and a freed buffer leaves a hole the next one
# would reuse): a 24 MiB tensor freed raises glibc's adaptive mmap threshold above 8 MiB, so an 8 MiB tensor comes
# from the heap. Prints the resident memory, in MiB, that freeing that tensor gave back (smaps_rollup: exact).
PROBE = """
import contextlib, re, sys, torch
from finescope_core.heap import mapped_large_allocations
def rss_mib():
    return int(re.search(r"Rss:\\s+(\\d+)", open("/proc/self/smaps_rollup").read()).group(1)) / 1024
torch.ones(6 * 2**20)
with mapped_large_allocations() if sys.argv[1] == "within" else contextlib.nullcontext():
    buffer = torch.ones(2 * 2**20)
    held = rss_mib()
    del buffer
    print(held - rss_mib())
"""


def given_back_mib(where: str) -> float:
    """What the probe prints, under glibc's defaults: a ``MALLOC_*`` variable (Dask's nanny sets
    ``MALLOC_TRIM_THRESHOLD_`` in the environment of a process that ran a cluster) turns the adaptive rule off."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", PROBE, where], check=True, capture_output=True, text=True, env=env)
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc_function("mallopt") is None,
                    reason="glibc's mallopt only")
def test_a_freed_large_buffer_is_given_back_within_the_block():
    if given_back_mib("without") > 2:
        pytest.skip("this C library gives the buffer back by itself, so there is nothing to show")
    assert given_back_mib("within") > 6


class RecordingLibc:
    """Stands in for the C library: records each mallopt call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


def test_the_environment_s_thresholds_hold_again_after_the_block(monkeypatch):
    """A worker whose environment asks glibc to trim eagerly (Dask's nanny does) keeps doing so after pruning, and
    within it is not made to keep more than it asked."""
    libc = RecordingLibc()
    monkeypatch.setattr(heap, "_libc", lambda: libc)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with heap.mapped_large_allocations(4 * 2**20):
        assert libc.calls == [(heap.M_MMAP_THRESHOLD, 4 * 2**20), (heap.M_TRIM_THRESHOLD, 65536)]
    assert libc.calls[2:] == [(heap.M_MMAP_THRESHOLD, heap.ADAPTIVE_CEILING), (heap.M_TRIM_THRESHOLD, 65536)]


def test_a_threshold_of_zero_from_the_environment_is_kept(monkeypatch):
    """``MALLOC_MMAP_THRESHOLD_=0`` (map every allocation) is a setting, not an absent one: pruning keeps it."""
    libc = RecordingLibc()
    monkeypatch.setattr(heap, "_libc", lambda: libc)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "0")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with heap.mapped_large_allocations(4 * 2**20):
        assert libc.calls == [(heap.M_MMAP_THRESHOLD, 0), (heap.M_TRIM_THRESHOLD, 4 * 2**20)]
    assert libc.calls[2:] == [(heap.M_MMAP_THRESHOLD, 0), (heap.M_TRIM_THRESHOLD, 2 * heap.ADAPTIVE_CEILING)]
