"""The import contract (``[tool.importlinter]`` in pyproject.toml) holds, and it bites.

``scripts/test.sh`` runs ``lint-imports`` on the checkout; these tests run it too, then on a
copy of the sources with one wrong import added, which must break the contract it names.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_sources(into: Path) -> Path:
    for name in ("pytrickle_worker", "processors"):
        shutil.copytree(REPO / name, into / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", into / "pyproject.toml")
    return into


def test_the_checkout_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        # A lower layer importing a higher one.
        (
            "pytrickle_worker/media/jpeg.py",
            "import pytrickle_worker.frontdoors.cms.endpoint",
            "Layers",
        ),
        (
            "pytrickle_worker/sources/hub.py",
            "import pytrickle_worker.frontdoors.streamserver.session",
            "Layers",
        ),
        # The running worker importing a dev tool.
        (
            "pytrickle_worker/frontdoors/cms/endpoint.py",
            "import pytrickle_worker.devtools.assets",
            "Dev tools",
        ),
        # The bottom importing anything of the worker.
        ("pytrickle_worker/core/backoff.py", "import pytrickle_worker.config", "Layers"),
        # One front door reaching into the other (siblings are independent).
        (
            "pytrickle_worker/frontdoors/cms/emission.py",
            "import pytrickle_worker.frontdoors.streamserver.manager",
            "Layers",
        ),
        # Transport reaching up to the camera sources.
        (
            "pytrickle_worker/transport/listen.py",
            "import pytrickle_worker.sources.hub",
            "Layers",
        ),
        # A dev tool imported from the bottom.
        ("pytrickle_worker/core/wakeup.py", "import pytrickle_worker.devtools", "Dev tools"),
    ],
)
def test_a_wrong_import_breaks_the_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    root = copy_sources(tmp_path)
    target = root / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # deliberately wrong\n")
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    assert any(name.startswith(contract) for name in broken_contracts(result.stdout)), result.stdout


def broken_contracts(report: str) -> list[str]:
    """The names of the contracts the report marks BROKEN (a long name wraps onto a second
    line, which ends with the verdict)."""
    section = report.split("Contracts\n---------\n", 1)[-1]
    broken: list[str] = []
    name: list[str] = []
    for line in section.splitlines():
        if not line.strip() or set(line) == {"-"} or line.startswith("Analyzed "):
            name = []
            continue
        name.append(line.strip())
        verdict = re.search(r" (KEPT|BROKEN)( \(.*\))?$", line)
        if verdict:
            if verdict.group(1) == "BROKEN":
                broken.append(" ".join(name))
            name = []
    return broken
