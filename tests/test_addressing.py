import subprocess
import sys
from pathlib import Path

from finescope_core import storage
from finescope_core.addressing import run_stage, stage_fingerprint
from finescope_core.config import DumpConfig


def test_equal_work_is_done_once(tmp_path: Path):
    calls = []

    def work(out: str) -> dict:
        calls.append(out)
        storage.write_json(storage.join(out, "x.json"), {"v": 1})
        return {"n": 1}

    first = run_stage(str(tmp_path), "acts", {"docs": {"fingerprint": "abc"}}, DumpConfig(), work)
    again = run_stage(str(tmp_path), "acts", {"docs": {"fingerprint": "abc"}}, DumpConfig(), work)
    other = run_stage(str(tmp_path), "acts", {"docs": {"fingerprint": "abd"}}, DumpConfig(), work)
    assert len(calls) == 2 and again["reused"] and again["uri"] == first["uri"] != other["uri"]
    assert storage.read_marker(first["uri"])["files"] == {"x.json": storage.sha256_uri(first["uri"] + "/x.json")}


def test_an_interrupted_stage_is_redone(tmp_path: Path):
    def crash(out: str) -> dict:
        storage.write_json(storage.join(out, "half.json"), {})
        raise RuntimeError("killed")

    try:
        run_stage(str(tmp_path), "acts", {}, None, crash)
    except RuntimeError:
        pass
    ref = run_stage(str(tmp_path), "acts", {}, None, lambda out: {"done": True})
    assert not ref["reused"] and ref["info"] == {"done": True}


def test_fingerprint_ignores_settings_left_at_their_defaults():
    explicit = DumpConfig(max_tokens=DumpConfig().max_tokens)
    assert stage_fingerprint("acts", {}, explicit) == stage_fingerprint("acts", {}, DumpConfig())
    assert stage_fingerprint("acts", {}, DumpConfig(max_tokens=7)) != stage_fingerprint("acts", {}, DumpConfig())


def test_scratch_left_by_a_killed_writer_is_removed_and_never_part_of_the_artifact(tmp_path: Path):
    """A writer killed inside ``staged_directory`` leaves its hidden scratch folder behind; the next run of the stage
    deletes it, keeps the scratch of a writer still running, and hashes neither into the marker."""
    uri = storage.join(str(tmp_path), "pruned", stage_fingerprint("pruned", {}, None))
    writer = ("import os, sys, time; from finescope_core import storage\n"
              "with storage.staged_directory(sys.argv[1]) as scratch:\n"
              "    (scratch / 'weights.bin').write_bytes(b'half'); print(scratch, flush=True)\n"
              "    time.sleep(60) if sys.argv[2] == 'live' else os.kill(os.getpid(), 9)\n")
    killed = subprocess.run([sys.executable, "-c", writer, storage.join(uri, "model"), "killed"],
                            capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", writer, storage.join(uri, "model"), "live"], stdout=subprocess.PIPE,
                            text=True)
    try:
        abandoned, running = Path(killed.stdout.strip()), Path(live.stdout.readline().strip())
        assert killed.returncode == -9 and abandoned.parent == running.parent == Path(uri)

        def work(out: str) -> dict:
            with storage.staged_directory(storage.join(out, "model")) as scratch:
                (scratch / "weights.bin").write_bytes(b"whole")
            return {}

        run_stage(str(tmp_path), "pruned", {}, None, work)
        assert not abandoned.exists() and running.exists()
        assert storage.read_marker(uri)["files"] == {"model/weights.bin": storage.sha256_bytes(b"whole")}
    finally:
        live.kill()
