"""The house rules the code's layout keeps (docs/design.md, "Layout"): wings that import downwards only,
no import cycles between modules, modules a reader can hold in their head, no history in the tree."""

from __future__ import annotations

import ast
import re
import subprocess

import pytest

from tests.helpers import REPO

PACKAGES = ("models", "policies", "server")


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> set[tuple[str, str]]:
    """(importer, imported) for every import in the product's packages, function-level ones included."""
    edges = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            importer = module_name(path)
            package_parts = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package_parts[:len(package_parts) - node.level + 1]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    edges.add((importer, target))
                elif isinstance(node, ast.Import):
                    edges.update((importer, alias.name) for alias in node.names)
    return edges


def in_wing(module: str, *wings: str) -> bool:
    return any(module == wing or module.startswith(wing + ".") for wing in wings)


def test_wings_import_downwards_only():
    edges = imports()
    upward = [(a, b) for a, b in edges
              if (in_wing(a, "server.engine", "server.runtime") and in_wing(b, "server.api", "server.http"))
              or (in_wing(a, "server.http") and in_wing(b, "server.api", "server.engine", "server.runtime"))
              or (in_wing(a, "server.runtime") and in_wing(b, "server.engine"))
              or (in_wing(a, "models") and in_wing(b, "policies", "server"))
              or (in_wing(a, "policies") and in_wing(b, "server", "torch", "fastapi", "starlette"))]
    assert not upward, upward


def test_no_two_modules_import_each_other():
    edges = {(a, b) for a, b in imports() if in_wing(b, *PACKAGES) and a != b}
    mutual = sorted((a, b) for a, b in edges if (b, a) in edges and a < b
                    and not (b.startswith(a + ".") or a.startswith(b + ".")))  # a package re-exporting its modules
    assert not mutual, mutual


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_400_lines(package):
    long = {module_name(p): n for p in (REPO / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_history_in_the_tree():
    """Code and docs say the current rule and the number behind it; what came before lives in git."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    texts = [name for name in tracked if name.endswith((".py", ".md", ".toml", ".yml", ".yaml", ".sh", ".txt"))
             or name in ("Makefile", "Dockerfile")]
    history = re.compile(r"\bsessions? \d+|\bsession-\d+", re.I)
    found = [name for name in texts if history.search((REPO / name).read_text(errors="replace"))]
    assert not found, found


def test_the_protocols_reach_the_engine_only_through_engine_client():
    """``server/api`` is typed against ``EngineClient``: it reads nothing else of the engine (its runtime,
    metrics, scheduler, settings), so the engine can change behind it."""
    from server.api.client import EngineClient

    allowed = {name for name in vars(EngineClient) if not name.startswith("_")} | set(EngineClient.__annotations__)
    used = set()
    for path in (REPO / "server" / "api").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
                if name in ("engine", "client"):
                    used.add((path.name, node.attr))
    assert used and not {(f, attr) for f, attr in used if attr not in allowed}
