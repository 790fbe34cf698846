"""The layering: every ``finescope_core`` module imports with Prefect unavailable, and the install ships the
application under ``finescope`` names."""

import ast
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
    probe = ("import importlib.util, finescope.flows.pipeline, finescope.tasks.stages, finescope.cli\n"
             "print([importlib.util.find_spec(name) is None for name in ('flows', 'tasks')])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[True, True]"


def core_imports(repo: Path) -> dict[str, set[str]]:
    """Every ``finescope_core`` module and the core modules it imports, at any depth of its code."""
    graph: dict[str, set[str]] = {}
    for path in (repo / "finescope_core").rglob("*.py"):
        parts = path.relative_to(repo).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finescope_core"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("finescope_core")}
        graph[name] = found
    return {name: {target for target in found if target in graph and target != name}
            for name, found in graph.items()}


def test_core_modules_import_each_other_without_a_circle(repo: Path):
    graph = core_imports(repo)
    assert graph["finescope_core.stages"] >= {"finescope_core.addressing", "finescope_core.formats"}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join((*path[path.index(name):], name)))
        if name not in done:
            for target in sorted(graph[name]):
                visit(target, (*path, name))
            done.add(name)

    for module in sorted(graph):
        visit(module, ())
