"""A dump killed mid-way (SIGKILL) resumes: the rerun recomputes only the shards that were not complete."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from finescope_core.activations import dump_activations, shard_uris
from finescope_core.config import DumpConfig

N_DOCS, SHARD_DOCS = 600, 10
SCRIPT = """
import sys
from finescope_core.activations import dump_activations
from finescope_core.config import DumpConfig
texts = [f"Document {{i}}: " + "the patient received aspirin and the fever resolved quickly " * 8 for i in range({n})]
dump_activations(sys.argv[1], [f"d{{i}}" for i in range({n})], texts, sys.argv[2], DumpConfig(shard_docs={s}))
"""


def complete_shards(out: str) -> list[int]:
    return [i for i in range(N_DOCS // SHARD_DOCS) if all(Path(u).exists() for u in shard_uris(out, i).values())]


def test_sigkill_then_resume(tiny_model: Path, tmp_path: Path):
    out = str(tmp_path / "acts")
    script = SCRIPT.format(n=N_DOCS, s=SHARD_DOCS)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_model), out], env=os.environ.copy())
    deadline = time.monotonic() + 300
    while len(complete_shards(out)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = complete_shards(out)
    assert 3 <= len(done) < N_DOCS // SHARD_DOCS, "the dump was not killed mid-way"
    stamps = {i: Path(shard_uris(out, i)["tokens"]).stat().st_mtime_ns for i in done}

    texts = [f"Document {i}: " + "the patient received aspirin and the fever resolved quickly " * 8
             for i in range(N_DOCS)]
    manifest = dump_activations(tiny_model, [f"d{i}" for i in range(N_DOCS)], texts, out,
                                DumpConfig(shard_docs=SHARD_DOCS))
    assert manifest["shards_reused"] == len(done)
    assert {i: Path(shard_uris(out, i)["tokens"]).stat().st_mtime_ns for i in done} == stamps
    assert complete_shards(out) == list(range(N_DOCS // SHARD_DOCS))
