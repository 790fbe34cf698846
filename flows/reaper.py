"""A watchdog that takes the CLI's child processes with it when the CLI dies, kill -9 included.

Prefect's temporary API server (and a local Dask cluster) are child processes of the CLI. A process killed with
SIGKILL cannot stop them, so a separate process watches: it notes the CLI's descendants while the CLI lives and
terminates them once the CLI is gone. Run as ``python -m flows.reaper PID``; ``start`` does that for this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil


def alive(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(pid: int, interval: float = 0.2) -> None:
    """Wait for process ``pid`` to end, then stop the descendants it had (terminate; kill after 5 s)."""
    me = os.getpid()
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    seen: list[psutil.Process] = []
    while alive(parent):
        try:
            seen = [child for child in parent.children(recursive=True) if child.pid != me]
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    for child in seen:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    for child in psutil.wait_procs(seen, timeout=5)[1]:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def start() -> None:
    """Start a watchdog over this process (in its own session, so that a Ctrl-C to the CLI's terminal leaves it to
    do its job)."""
    subprocess.Popen([sys.executable, "-m", "flows.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
