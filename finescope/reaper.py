"""A watchdog that takes the CLI's child processes with it when the CLI dies, kill -9 included.

Prefect's temporary API server (and a local Dask cluster) are child processes of the CLI. A process killed with
SIGKILL cannot stop them, so a separate process watches it. The CLI marks its environment with a token that every
process it starts inherits; once the CLI is gone, the watchdog terminates the processes that carry the token (they
are found even if the CLI started them a moment before it died). Run as ``python -m finescope.reaper PID TOKEN``;
``start`` does that for this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil

TOKEN = "FINESCOPE_CLI_TOKEN"


def alive(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marked(token: str) -> list[psutil.Process]:
    """The running processes, this one excepted, whose environment carries ``token``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(TOKEN) == token:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def watch(pid: int, token: str, interval: float = 0.2) -> None:
    """Wait for process ``pid`` to end, then stop the processes that carry ``token`` (terminate; kill after 5 s)."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:  # died before this watchdog started
        parent = None
    while parent is not None and alive(parent):
        time.sleep(interval)
    left = marked(token)
    for process in left:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    for process in psutil.wait_procs(left, timeout=5)[1]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def start() -> None:
    """Mark this process's environment, so that the processes it starts from now on inherit the mark, and start a
    watchdog over it (in its own session, so that a Ctrl-C to the CLI's terminal leaves it to do its job)."""
    token = os.environ[TOKEN] = uuid.uuid4().hex  # a CLI started by another gets a mark of its own
    subprocess.Popen([sys.executable, "-m", "finescope.reaper", str(os.getpid()), token], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
