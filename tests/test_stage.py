from pathlib import Path

from finescope_core import storage
from finescope_core.config import DumpConfig
from finescope_core.stage import run_stage, stage_fingerprint


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
