"""README's "Write your own processor" works when pasted: its module, saved as
``processors/red.py``, is found by the registry and runs on both front doors.

The worker runs as a process whose ``processors/`` package is a copy of the repository's
plus the pasted module (a copy of ``server.py`` next to it puts that folder first on
``sys.path``); the repository itself is not touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from pytrickle_worker.devtools.assets import DemoAssets
from tests.test_processors_brightness import run_on_both_doors
from tests.worker_process import REPO, WorkerProcess


def readme_processor_module() -> tuple[str, str]:
    """The file name the README says to save the example as, and the example's code."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Write your own processor", 1)[1].split("\n## ", 1)[0]
    [name] = re.findall(r"Save this as\s+`processors/(\w+\.py)`", section)
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return name, code


def test_the_readme_example_is_lint_clean_python(tmp_path: Path) -> None:
    name, code = readme_processor_module()
    assert name == "red.py"
    assert "def create_processor(" in code and 'PROCESSOR_NAME = "red"' in code
    module = tmp_path / "processors" / name
    module.parent.mkdir()
    module.write_text(code)
    ruff = Path(sys.executable).parent / "ruff"
    for check in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [str(ruff), *check, "--config", str(REPO / "pyproject.toml"), str(module)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


async def test_the_readme_processor_runs_on_both_doors(
    tmp_path: Path, demo_assets: DemoAssets
) -> None:
    name, code = readme_processor_module()
    overlay = tmp_path / "overlay"
    shutil.copytree(
        REPO / "processors", overlay / "processors", ignore=shutil.ignore_patterns("__pycache__")
    )
    (overlay / "processors" / name).write_text(code)
    shutil.copy(REPO / "server.py", overlay / "server.py")
    worker = WorkerProcess(
        tmp_path, "--no-demo", env={"PTW_STREAM_PROCESSOR": "red"}, script=overlay / "server.py"
    )
    # share 0: every frame is "red enough", so both doors report at once.
    await run_on_both_doors(worker, demo_assets, name="red", params={"share": 0.0}, expected="red")
