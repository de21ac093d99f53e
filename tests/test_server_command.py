"""``chatft server``: the project's command reaches the server package, from any folder.

What ``up`` prints to stop the server is pasted as printed in tests/test_server_schedules.py
and tests/test_team_server.py against running servers; here the same commands run against
a home where nothing runs, in seconds.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from server.instance import Server
from server.printed_commands import server_command
from tests.helpers import CHATFT, PROJECT_DIR, free_port


def test_status_of_a_home_where_nothing_runs(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [CHATFT, "server", "status", "--home", str(tmp_path / "home"), "--port", str(port)],
        cwd="/", capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["home"] == str((tmp_path / "home").resolve())
    assert found["ui"] == f"http://127.0.0.1:{port}"
    assert (found["server_pid"], found["worker_pid"], found["healthy"]) == (None, None, False)
    assert found["database"] == "sqlite"


def test_a_wrong_command_is_refused_naming_the_choices() -> None:
    done = subprocess.run([CHATFT, "server", "start"], cwd="/", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "chatft server: error: argument command: invalid choice: 'start'" in done.stderr
    assert "'up', 'down', 'status', 'clean'" in done.stderr


def test_the_printed_stop_command_runs_as_printed(tmp_path: Path) -> None:
    server = Server(tmp_path / "my home", "127.0.0.1", free_port())
    stop = server_command("down", server, tmp_path / "workspace")
    assert stop.startswith(f"{shlex.quote(CHATFT)} server down --host 127.0.0.1 ")
    assert f"--port {server.port}" in stop and shlex.quote(str(server.home)) in stop
    done = subprocess.run(shlex.split(stop), cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["No worker running", "No server running"]
    assert f"No local endpoint in {(tmp_path / 'workspace').resolve()}" in done.stdout


def test_python_m_server_is_the_same_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "status", "--home", str(tmp_path)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["home"] == str(tmp_path.resolve())


def test_chatft_loads_the_server_package_only_for_its_command() -> None:
    """The other commands start without importing the server's modules."""
    check = ("import sys, flows.commands; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'server'))")
    done = subprocess.run([sys.executable, "-c", check], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
