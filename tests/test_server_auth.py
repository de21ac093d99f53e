"""When ``up`` turns authentication on, where the string is kept, and what it prints.

The server side (401 for strangers, the string only in the server's and workers'
environments) is exercised on a real server in tests/test_team_server.py.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from server import auth as server_auth
from server.instance import Server
from server.manager import auth_settings
from server.printed_commands import access_lines, run_now_command, worker_command


def test_loopback_runs_without_a_string_unless_asked(tmp_path: Path) -> None:
    assert server_auth.resolve(tmp_path, "127.0.0.1") is None
    assert server_auth.resolve(tmp_path, "localhost") is None
    assert not any(tmp_path.iterdir())
    asked = server_auth.resolve(tmp_path, "127.0.0.1", wanted=True)
    assert asked == tmp_path / "auth-string"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "prefect.internal"])  # noqa: S104
def test_beyond_loopback_a_private_string_is_made_once_and_kept(
    tmp_path: Path, host: str
) -> None:
    path = server_auth.resolve(tmp_path, host)
    assert path == tmp_path / "auth-string"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user, _, password = path.read_text().strip().partition(":")
    assert user == "chatft" and len(password) >= 43
    first = path.read_text()
    # Kept across up/down, and on loopback too once it exists.
    assert server_auth.resolve(tmp_path, host) == path
    assert server_auth.resolve(tmp_path, "127.0.0.1") == path
    assert path.read_text() == first


def test_a_teams_own_file_is_taken_only_when_closed_to_others(tmp_path: Path) -> None:
    own = tmp_path / "team-auth"
    own.write_text("team:correct-horse-battery-staple\n")
    own.chmod(0o644)
    with pytest.raises(server_auth.AuthError, match=r"--auth-file: .*team-auth is open to "
                       r"other users \(mode -rw-r--r--\).*chmod 600"):
        server_auth.resolve(tmp_path / "home", "0.0.0.0", auth_file=own)  # noqa: S104
    assert not (tmp_path / "home").exists()  # nothing recorded for a refused file
    own.chmod(0o600)
    assert server_auth.resolve(tmp_path / "home", "0.0.0.0", auth_file=own) == own  # noqa: S104
    # Remembered: the next up of that home uses it without the option.
    assert server_auth.resolve(tmp_path / "home", "0.0.0.0") == own  # noqa: S104
    assert server_auth.recorded(tmp_path / "home") == own
    assert "correct-horse" not in (tmp_path / "home" / "auth-file").read_text()
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    with pytest.raises(server_auth.AuthError, match="must hold the auth string on one line"):
        server_auth.read(empty)


def test_a_refused_auth_file_fails_up_naming_the_option(tmp_path: Path) -> None:
    own = tmp_path / "team-auth"
    own.write_text("team:secret-for-this-test\n")
    own.chmod(0o640)
    done = subprocess.run(
        [sys.executable, "-m", "server", "up",
         "--home", str(tmp_path / "home"), "--auth-file", str(own)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--auth-file:" in done.stderr and "chmod 600" in done.stderr
    assert "secret-for-this-test" not in done.stdout + done.stderr


def test_printed_commands_read_the_string_from_its_file(tmp_path: Path) -> None:
    path = server_auth.resolve(tmp_path / "my home", "0.0.0.0")  # noqa: S104
    server = Server(tmp_path / "my home", "0.0.0.0", 4321, auth_file=path,  # noqa: S104
                    public_url="https://prefect.example.internal/")
    secret = path.read_text().strip()
    printed = "\n".join([*access_lines(server), run_now_command(server, {
        "name": "smoke-test-endpoints",
        "entrypoint": "flows/smoke_test_endpoints.py:smoke_test_endpoints"})])
    assert secret not in printed
    worker = worker_command(server)
    assert worker == (f"PREFECT_API_URL=https://prefect.example.internal/api "
                      f"PREFECT_API_AUTH_STRING=\"$(cat '{path}')\" "
                      "prefect worker start --pool chatft-process")
    assert "WARNING" not in printed  # behind TLS (the public URL is https)
    # The shell reads the file into the variable: the string reaches the environment only.
    shown = subprocess.run(
        ["bash", "-c", server_auth.client_prefix(path) + "env"],
        capture_output=True, text=True, check=True).stdout
    assert f"PREFECT_API_AUTH_STRING={secret}" in shown.splitlines()
    # The server and its workers get it; a string from the starter's environment does not
    # leak into this server's processes.
    env = server.env()
    assert env["PREFECT_API_AUTH_STRING"] == secret
    assert auth_settings(server)["PREFECT_SERVER_API_AUTH_STRING"] == secret
    assert auth_settings(server)["PREFECT_UI_API_URL"] == (
        "https://prefect.example.internal/api")


def test_plain_http_beyond_loopback_is_warned_about(tmp_path: Path) -> None:
    path = server_auth.resolve(tmp_path, "0.0.0.0")  # noqa: S104
    server = Server(tmp_path, "0.0.0.0", 4321, auth_file=path)  # noqa: S104
    lines = access_lines(server)
    assert any(line.startswith("WARNING: the server listens on 0.0.0.0 over plain HTTP")
               for line in lines)
    assert server.api_url == "http://127.0.0.1:4321/api"  # this machine's own clients
    assert not server.public_url.startswith("http://127.")  # what other machines use
    loopback = Server(tmp_path / "solo", "127.0.0.1", 4321)
    assert loopback.env().get("PREFECT_API_AUTH_STRING") is None
    assert access_lines(loopback) == [
        "Authentication: off (the server listens on this machine only; --auth turns it on)"]


def test_two_ups_at_once_share_one_whole_string(tmp_path: Path) -> None:
    """Two first ``up``s beyond loopback at the same moment: one string, both use it."""
    from concurrent.futures import ThreadPoolExecutor

    # The other up writes its string between this one's look and its write.
    first = tmp_path / "raced" / "auth-string"
    server_auth.generate(first)
    kept = first.read_text()
    server_auth.generate(first)  # once raised FileExistsError and failed the up
    assert first.read_text() == kept

    # Many rounds: a reader catching the recorded pointer mid-write is a narrow window.
    for round_ in range(40):
        home = tmp_path / f"home{round_}"
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda _, h=home: server_auth.resolve(h, "0.0.0.0"), range(8)))  # noqa: S104
        assert set(made) == {home / "auth-string"}
        assert [p.name for p in home.iterdir() if p.name.startswith(".")] == []
        user, _, password = (home / "auth-string").read_text().strip().partition(":")
        assert user == "chatft" and len(password) >= 43
        assert stat.S_IMODE((home / "auth-string").stat().st_mode) == 0o600
