"""Large buffers freed during pruning go back to the system, however high glibc's adaptive threshold has climbed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from finescope_core.heap import _libc

# In a fresh process (mallopt changes the whole process): a 24 MiB tensor freed raises glibc's adaptive mmap
# threshold above 8 MiB, so the next 8 MiB tensor comes from the heap. Prints how much resident memory freeing that
# tensor gave back, in MiB, without and then with the fixed threshold.
PROBE = """
import re, torch
from finescope_core.heap import mapped_large_allocations
def rss_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
def given_back():
    buffer = torch.ones(2 * 2**20)  # 8 MiB, touched
    held = rss_mib()
    del buffer
    return held - rss_mib()
torch.ones(6 * 2**20)  # 24 MiB mapped, then freed at once: the threshold rises to it
without = given_back()
with mapped_large_allocations():
    within = given_back()
print(round(without, 1), round(within, 1))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc() is None or not hasattr(_libc(), "mallopt"),
                    reason="glibc's mallopt only")
def test_a_freed_large_buffer_is_given_back_within_the_block():
    done = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True)
    without, within = map(float, done.stdout.split())
    assert without < 2, "the premise: under the adaptive threshold the heap keeps the freed 8 MiB"
    assert within > 6
