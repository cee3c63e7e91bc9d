"""The layout of DESIGN.md holds by construction: dependencies point one way.

Layers, lowest first: the base modules of ``pems/`` (:data:`BASE`: errors, TOML reading, report
pages, …), ``twin``, ``calibration``, ``controllers``, ``scenarios``, ``live``, and the top: the
command line (``pems/cli.py``, ``pems/commands/``) and the tools that read every package (every
other module of ``pems/``, e.g. the reference-page generator ``pems/docs.py``). A package may import
the packages below it, never one above it; ``twin`` imports none of the others, and nothing below
the top imports the command line. Every import statement counts, also those inside functions and
under ``TYPE_CHECKING`` (a cycle hidden in a function is still a cycle).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Source folder → the installed package (pyproject's package-dir).
FOLDERS = {"twin": "pems.twin", "calibration": "pems.calibration", "controllers": "pems.controllers",
           "scenarios": "pems.scenarios", "live": "pems.live", "pems": "pems"}

#: The base modules every package may import; every other module of ``pems/`` is the top layer.
BASE = frozenset({"pems", "pems.errors", "pems.tomlio", "pems.reporting", "pems.threads", "pems.memory", "pems.quiet",
                  "pems.paths", "pems.browser"})

#: Each layer and the layers it may import (itself included).
ALLOWED = {
    "base": {"base"},
    "twin": {"base", "twin"},
    "calibration": {"base", "twin", "calibration"},
    "controllers": {"base", "twin", "calibration", "controllers"},
    "scenarios": {"base", "twin", "calibration", "controllers", "scenarios"},
    "live": {"base", "twin", "calibration", "controllers", "scenarios", "live"},
    "top": {"base", "twin", "calibration", "controllers", "scenarios", "live", "top"},
}


def layer(module: str) -> str | None:
    """The layer of a ``pems…`` module name (``None`` for other libraries)."""
    parts = module.split(".")
    if parts[0] != "pems":
        return None
    if module in BASE:
        return "base"
    if parts[1] in ("twin", "calibration", "controllers", "scenarios", "live"):
        return parts[1]
    return "top"


def modules() -> list[tuple[str, Path]]:
    """Every module of the project: (installed name, source file)."""
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([package, *parts]), path))
    return out


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """Every module an import statement of the file names (line, absolute name); also those inside
    functions and under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from pems import cli`` names a module too (``from pems import __version__`` does not)
            found += [(node.lineno, f"pems.{a.name}") for a in node.names if target == "pems"
                      and ((ROOT / "pems" / f"{a.name}.py").is_file() or (ROOT / "pems" / a.name).is_dir())]
    return found


def test_every_import_points_down_the_layers():
    wrong = []
    for name, path in modules():
        own = layer(name)
        for line, target in imports(name, path):
            other = layer(target)
            if other is not None and other not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {target} ({other})")
    assert not wrong, "imports against DESIGN.md's layout:\n" + "\n".join(wrong)


def test_no_import_by_source_folder_name():
    """The folders install as ``pems.<folder>``: ``import twin`` would only work from a checkout."""
    wrong = [f"{path.relative_to(ROOT)}:{line}: {target}" for name, path in modules()
             for line, target in imports(name, path)
             if target.split(".")[0] in ("twin", "calibration", "controllers", "scenarios", "live")]
    assert not wrong, "\n".join(wrong)


def test_layer_names():
    assert layer("pems.twin.model") == "twin"
    assert layer("pems.commands.live") == "top" and layer("pems.cli") == "top"
    assert layer("pems.errors") == "base" and layer("pems") == "base"
    assert layer("numpy") is None


IMPORT_ALONE = """
import importlib, sys
names = sys.argv[1:]
for n in names:
    importlib.import_module(n)
above = {above!r}
loaded = sorted(m for m in sys.modules if m.startswith("pems") and m not in names and
                any(m == a or m.startswith(a + ".") for a in above))
print("\\n".join(loaded))
sys.exit(1 if loaded else 0)
"""


@pytest.mark.slow  # ~1.5 s of imports per layer; the AST test above holds the rule in milliseconds
@pytest.mark.parametrize("own", ["base", "twin", "calibration", "controllers", "scenarios", "live", "top"])
def test_each_layer_imports_alone(own):
    """A fresh interpreter imports every module of the layer and nothing above it gets loaded."""
    names = [n for n, _ in modules() if layer(n) == own and not n.endswith("__main__")]
    above = sorted({f"pems.{p}" for p in ("twin", "calibration", "controllers", "scenarios", "live")
                    if p not in ALLOWED[own]} | ({"pems.cli", "pems.commands"} if own != "top" else set()))
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", IMPORT_ALONE.format(above=above), *names], cwd=ROOT / "tests",
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"importing the {own} layer alone: {r.stdout}{r.stderr[-2000:]}"
