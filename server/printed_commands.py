"""The commands ``up`` and ``down`` print, each pasteable as printed.

A printed command names what it needs (the executable, the port, the Prefect home, the
state folder in use), so it works from any folder; the auth string is never part of one:
a client's command reads it from its file in the shell that runs it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from server import auth
from server.deployments import full_name
from server.instance import Server, prefect_executable, running_db
from server.provisioning import WORK_POOL


def client_command(server: Server, *words: str, api_url: str | None = None) -> str:
    """A command of a Prefect client of this server, pasteable in a POSIX shell: the API
    address and the auth string (read from its file by that shell, never shown) are given
    as assignments, which stay out of the command's arguments and so out of ``ps``."""
    return (f"PREFECT_API_URL={shlex.quote(api_url or server.api_url)} "
            + auth.client_prefix(server.auth_file) + shlex.join(words))


def run_now_command(server: Server, deployment: dict) -> str:
    """``prefect deployment run`` of ``deployment`` on this server, pasteable."""
    return client_command(server, prefect_executable(), "deployment", "run",
                          full_name(deployment))


def worker_command(server: Server) -> str:
    """How a worker on another machine joins (the project installed there, the auth file
    copied to the same path)."""
    return client_command(server, "prefect", "worker", "start", "--pool", WORK_POOL,
                          api_url=f"{server.public_url}/api")


def access_lines(server: Server) -> list[str]:
    """What ``up`` tells a person about who may use the server and how to join it."""
    lines = []
    if server.auth_file is None:
        lines.append("Authentication: off (the server listens on this machine only; "
                     "--auth turns it on)")
    else:
        lines.append(f"Authentication: on; the auth string is in {server.auth_file} (mode "
                     "0600). The UI asks for it once per browser; clients and workers "
                     f"read it from that file: {auth.CLIENT_SETTING}=\"$(cat FILE)\"")
    if not auth.is_loopback(server.host) and not server.public_url.startswith("https:"):
        lines.append(
            f"WARNING: the server listens on {server.host} over plain HTTP: the auth string "
            "and every block's secrets cross the network readable by anyone on it. Put a "
            "TLS proxy in front, listen on 127.0.0.1 behind it and give --public-url "
            "https://... (docs/server.md, \"TLS\").")
    if server.reached_from_elsewhere:
        lines.append(f"A worker on another machine (copy {server.auth_file} there first, "
                     f"mode 0600):\n  {worker_command(server)}")
    return lines


def chatft_executable() -> list[str]:
    """The words that run ``chatft`` as a pasted command: the console script beside this
    interpreter (a venv's, found from any folder and any shell, activated or not), else
    this interpreter on the package, as it was started."""
    script = Path(sys.executable).with_name("chatft")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.commands"]


def server_command(command: str, server: Server, state_dir: Path | None = None) -> str:
    """``chatft server COMMAND`` (up, down, status, clean) as a person can paste it: the
    project's ``chatft`` and the options in use (the state folder when given)."""
    state = ["--state-dir", str(state_dir.resolve())] if state_dir is not None else []
    return shlex.join([
        *chatft_executable(), "server", command, "--host", server.host,
        "--port", str(server.port), "--home", str(server.home), *state,
        "--db", running_db(server),
    ])


def endpoints_command(state_dir: Path, *words: str) -> str:
    """A local endpoints command (``chatft``) for the workspace in ``state_dir``, pasteable."""
    return shlex.join([sys.executable, "-m", "workspaces.local.cli", "--state-dir",
                       str(state_dir.resolve()), "endpoints", *words])


def after_up_lines(server: Server, deployed: list[str], state_dir: Path) -> list[str]:
    """What ``up`` prints last: where the UI is, who may use the server, how to reach it
    from this shell and how to stop it."""
    lines = [f"\nPrefect UI: {server.public_url}   deployments: {', '.join(deployed) or 'none'}",
             *access_lines(server),
             f"Use it from this shell:  export PREFECT_API_URL={server.api_url}"]
    if server.auth_file is not None:
        lines.append(f"                         export "
                     f"{auth.client_prefix(server.auth_file).strip()}")
    lines.append(f"Stop it:                 {server_command('down', server, state_dir)}")
    return lines
