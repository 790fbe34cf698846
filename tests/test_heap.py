"""Large buffers freed during pruning go back to the system, however high glibc's adaptive threshold has climbed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from finescope_core.heap import _libc

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
    done = subprocess.run([sys.executable, "-c", PROBE, where], check=True, capture_output=True, text=True)
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc() is None or not hasattr(_libc(), "mallopt"),
                    reason="glibc's mallopt only")
def test_a_freed_large_buffer_is_given_back_within_the_block():
    if given_back_mib("without") > 2:
        pytest.skip("this C library gives the buffer back by itself, so there is nothing to show")
    assert given_back_mib("within") > 6
