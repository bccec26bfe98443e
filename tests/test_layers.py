"""Imports go one way (DESIGN.md): lake at the bottom; ingest, synth and dosimetry on it;
features on dosimetry; modeling and registry above; pipelines on top. No import goes up, not
even inside a function, and the lower layers import nothing of theralake inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package folder -> (its name under theralake, its layer)
PACKAGES = {"theralake_pkg": ("", 0), "lake": ("lake", 1), "ingest": ("ingest", 2),
            "synth": ("synth", 2), "dosimetry": ("dosimetry", 2), "features": ("features", 3),
            "modeling": ("modeling", 4), "registry": ("registry", 4),
            "pipelines": ("pipelines", 5)}
LAYER = {name: layer for name, layer in PACKAGES.values()}
#: (importer, imported) pairs of one layer allowed: the registry stores modeling's models and
#: modeling registers them; the synthetic cohort fills a lake through ingest
PEERS = {("modeling", "registry"), ("registry", "modeling"), ("synth", "ingest")}
#: layers whose modules import no theralake module inside a function
FLAT = ("", "lake", "ingest", "synth", "dosimetry", "features")


def _imports(path: Path, package: str) -> list[tuple[int, str, bool]]:
    """(line, imported theralake package, inside a function) of a module."""
    tree = ast.parse(path.read_text())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            names = [package]  # relative: its own package
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "theralake" or name.startswith("theralake."):
                part = name.split(".")[1] if "." in name else ""
                part = part if part in LAYER else ""  # theralake.settings: the root package
                if isinstance(node, ast.ImportFrom) and part == "" and node.level == 0:
                    subs = [a.name for a in node.names if a.name in LAYER]
                    part = subs[0] if subs else ""
                out.append((node.lineno, part, id(node) in inside))
            elif isinstance(node, ast.ImportFrom) and node.level:
                out.append((node.lineno, package, id(node) in inside))
    return out


def _modules() -> list[tuple[Path, str]]:
    return [(p, name) for folder, (name, _) in PACKAGES.items()
            for p in sorted((ROOT / folder).rglob("*.py"))]


def test_the_package_map_covers_every_folder():
    mapped = set(PACKAGES)
    code = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert code <= mapped, code - mapped


@pytest.mark.parametrize("path, package", _modules(), ids=lambda v: str(v)[-40:])
def test_no_import_goes_up(path, package):
    for line, target, _ in _imports(path, package):
        if target == package or (package, target) in PEERS:
            continue
        assert LAYER[target] < LAYER[package] or (package == "" and target == ""), \
            f"{path.relative_to(ROOT)}:{line} imports theralake.{target} (layer " \
            f"{LAYER[target]}) from {package or 'theralake'} (layer {LAYER[package]})"


@pytest.mark.parametrize("path, package", [m for m in _modules() if m[1] in FLAT],
                         ids=lambda v: str(v)[-40:])
def test_lower_layers_import_nothing_inside_functions(path, package):
    hidden = [line for line, _, inside in _imports(path, package) if inside]
    assert not hidden, f"{path.relative_to(ROOT)} imports theralake inside functions at " \
        f"lines {hidden}"


def test_the_checker_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from theralake.modeling import train\n")
    assert _imports(module, "dosimetry") == [(2, "modeling", True)]
