"""The layer check (`python -m scripts.layers`): the project has no upward import, and the
check names the file, line and import of one, also one written inside a function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m scripts.layers`` from the repository's root, as a person runs it."""
    return subprocess.run([sys.executable, "-m", "scripts.layers", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_project_has_no_upward_import():
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    for layer in ("scripts", "flows", "server", "tasks / blocks", "workspaces"):
        assert f". {layer}: " in result.stdout
    assert "No upward import." in result.stdout


def test_an_upward_import_is_named_with_its_file_and_line(tmp_path):
    for package in ("scripts", "flows", "tasks", "blocks", "workspaces"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "flows" / "run.py").write_text("from tasks import step\n")
    (tmp_path / "tasks" / "step.py").write_text("from . import helper\nimport os\n")
    (tmp_path / "workspaces" / "store.py").write_text(
        '"""A workspace module."""\n\n\ndef save():\n    from flows.run import main\n'
        "    return main\n")
    (tmp_path / "blocks" / "config.py").write_text("from ..flows import run\n")

    result = run_check(str(tmp_path))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "workspaces/store.py:5: workspaces.store imports flows.run" in result.stdout
    assert "blocks/config.py:1: blocks.config imports flows" in result.stdout
    assert "flows/run.py" not in result.stdout and "tasks/step.py" not in result.stdout
    assert "2 upward import(s)" in result.stdout


def test_the_server_may_not_import_a_flow_that_imports_it(tmp_path):
    """``chatft server`` (flows) imports the server package: the server importing a flow,
    even late, would close the loop, and is named."""
    for package in ("scripts", "flows", "server", "tasks", "blocks", "workspaces"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "flows" / "commands.py").write_text(
        "def server(argv):\n    from server.cli import main\n    return main(argv)\n")
    (tmp_path / "server" / "cli.py").write_text("from blocks import alerts\n")
    (tmp_path / "server" / "manager.py").write_text(
        "def up():\n    from flows.commands import main\n    return main\n")

    result = run_check(str(tmp_path))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "server/manager.py:2: server.manager imports flows.commands" in result.stdout
    assert "flows/commands.py" not in result.stdout and "server/cli.py" not in result.stdout
    assert "1 upward import(s)" in result.stdout
