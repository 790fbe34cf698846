"""The layering: every ``finescope_core`` module imports with Prefect unavailable, and the install ships the
application under ``finescope`` names."""

import subprocess
import sys
import tomllib
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


def test_the_install_ships_every_package_under_finescope_names(repo: Path, tmp_path: Path):
    """pyproject lists every package folder (a new one left out would be missing from a wheel), and the flows and
    tasks import as ``finescope.flows``/``finescope.tasks`` from anywhere, never as generic top-level names."""
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(init.parent.relative_to(repo).parts)
               for top in ("finescope", "finescope_core") for init in (repo / top).rglob("__init__.py")}
    assert folders <= listed, f"add {sorted(folders - listed)} to [tool.setuptools] packages"
    probe = ("import importlib.util, finescope.flows.finescope, finescope.tasks.stages, finescope.cli\n"
             "print([importlib.util.find_spec(name) is None for name in ('flows', 'tasks')])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[True, True]"
