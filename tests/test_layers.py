"""The bottom layers stay at the bottom: ``core`` imports nothing of the worker outside
``core``; ``media`` imports neither the front doors nor the streaming and ingest layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytrickle_worker"

#: For each bottom package, the packages of the worker it may import besides itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "media": {"core", "errors", "hardware", "logutil", "processing"},
}


def imported_worker_packages(path: Path) -> set[str]:
    """The first component under ``pytrickle_worker`` of every import in ``path``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pytrickle_worker" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_bottom_package_imports_nothing_above_it(package: str) -> None:
    files = sorted((PACKAGE / package).glob("*.py"))
    assert files
    for path in files:
        above = imported_worker_packages(path) - ALLOWED[package] - {package}
        assert not above, f"{path.name} imports {sorted(above)}"
