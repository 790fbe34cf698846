"""The library stands alone: every ``finescope_core`` module imports with Prefect unavailable."""

import subprocess
import sys
from pathlib import Path

BLOCK_PREFECT_THEN_IMPORT_ALL = """
import importlib, pkgutil, sys

class NoPrefect:
    def find_spec(self, name, path=None, target=None):
        if name == "prefect" or name.startswith("prefect."):
            raise ImportError(f"{name} is blocked: finescope_core must not import Prefect")

sys.meta_path.insert(0, NoPrefect())
import finescope_core
for module in pkgutil.walk_packages(finescope_core.__path__, "finescope_core."):
    importlib.import_module(module.name)
print(sorted(name for name in sys.modules if name.startswith("finescope_core.")))
"""


def test_every_core_module_imports_without_prefect(repo: Path):
    done = subprocess.run([sys.executable, "-c", BLOCK_PREFECT_THEN_IMPORT_ALL], cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finescope_core.stages" in done.stdout and "finescope_core.preflight" in done.stdout
