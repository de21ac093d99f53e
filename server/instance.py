"""One Prefect server of the project: its home, address, environment and processes.

A ``Server`` knows where the server and worker of one Prefect home keep their pid files
and logs, how this machine and others reach it (``api_url``, ``public_url``), which
environment every prefect command and process started for it gets (the auth string, never
the database's settings), and how such a process is started and stopped.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

from server import auth

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Database settings go to the server process alone: a worker, a flow run or a prefect
# command talks to the API and must not hold the database password.
DATABASE_SETTINGS = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_")
# An auth string in the starter's environment is another server's: this server's own comes
# from its auth file (server/auth.py) and goes only where it is needed.
AUTH_SETTINGS = (auth.SERVER_SETTING, auth.CLIENT_SETTING)
# How long a stop waits after SIGTERM before SIGKILL. Prefect's server shuts down cleanly.
# Its worker (3.8.8) never exits on SIGTERM, even idle: its handler turns the first signal
# into an interrupt it does not act on and the next one into SIGKILL (seen by hand here),
# so a long wait only delayed the same kill. Flow runs it starts with Prefect's default
# command run in a session of their own, outside the group this kills.
SERVER_STOP_S = 30.0
WORKER_STOP_S = 5.0
# A server bound to one of these listens on every interface of the machine.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 - names of binds, not a bind


class Server:
    """Where the server and worker of one Prefect home live, and how to reach them."""

    def __init__(
        self, home: Path, host: str, port: int, project_dir: Path = PROJECT_DIR,
        extra_env: dict[str, str] | None = None, auth_file: Path | None = None,
        public_url: str | None = None,
    ):
        """The server of Prefect home ``home``, listening on ``host``:``port``; it runs
        ``project_dir``'s deployments, with ``auth_file``'s string when one is given and
        ``public_url`` as the address others reach it at (default: derived from ``host``)."""
        self.home = home.resolve()
        self.extra_env = dict(extra_env or {})
        self.host = host
        self.port = port
        self.project_dir = project_dir.resolve()
        # The file of the auth string (None: no authentication); read when first needed.
        self.auth_file = auth_file
        self._public_url = public_url.rstrip("/") if public_url else None
        self._csrf: tuple[str, str] | None = None  # (client, token), once asked for

    @property
    def local_host(self) -> str:
        """Where this machine reaches the server: a wildcard bind is reached on loopback."""
        return "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host

    @property
    def api_url(self) -> str:
        """The API address this machine's clients, worker and flow runs use."""
        return f"http://{self.local_host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """The UI's address on this machine."""
        return f"http://{self.local_host}:{self.port}"

    @property
    def reached_from_elsewhere(self) -> bool:
        """Whether people or workers on other machines reach the server: it listens
        beyond loopback, or a public URL (a proxy's) leads to it."""
        return self._public_url is not None or not auth.is_loopback(self.host)

    @functools.cached_property
    def public_url(self) -> str:
        """Where people and workers on other machines reach the server (``--public-url``,
        e.g. the TLS proxy's https address; else this machine's name when it listens
        beyond loopback). Looked up once: the name may take a DNS query."""
        if self._public_url:
            return self._public_url
        if auth.is_loopback(self.host):
            return self.ui_url
        name = machine_address() if self.host in WILDCARD_HOSTS else self.host
        return f"http://{name}:{self.port}"

    @functools.cached_property
    def auth_string(self) -> str | None:
        """The auth string of ``auth_file`` (None: no authentication)."""
        return None if self.auth_file is None else auth.read(self.auth_file)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every prefect command and process started for this server."""
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
            PREFECT_CLI_PROMPT="false",
            TOKENIZERS_PARALLELISM="false",
        )
        env.pop("PREFECT_API_KEY", None)  # a local server takes no key
        for name in [k for k in env if k.startswith(DATABASE_SETTINGS + AUTH_SETTINGS)]:
            del env[name]
        if self.auth_string is not None:
            env[auth.CLIENT_SETTING] = self.auth_string
        env.update(self.extra_env)
        env.update(extra)
        return env

    def headers(self) -> dict[str, str]:
        """What a call of this server's API carries: the auth string, and the CSRF token
        once the server asked for one (see ``api``)."""
        headers = {"Content-Type": "application/json"}
        if self.auth_string is not None:
            headers["Authorization"] = auth.basic_header(self.auth_string)
        if self._csrf:
            headers.update({"Prefect-Csrf-Client": self._csrf[0],
                            "Prefect-Csrf-Token": self._csrf[1]})
        return headers

    def fetch_csrf_token(self) -> None:
        """Get a CSRF token for this client (a server a team runs with CSRF protection)."""
        client = uuid.uuid4().hex
        request = urllib.request.Request(  # noqa: S310 - our own server's http URL
            f"{self.api_url}/csrf-token?client={client}", headers=self.headers())
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            self._csrf = (client, json.loads(resp.read())["token"])

    @property
    def auth_marker(self) -> Path:
        """Present while the running server was started with authentication."""
        return self.home / "server.auth"

    @property
    def db_file(self) -> Path:
        """Which database the running server was started on (sqlite or postgres)."""
        return self.home / "server.db"

    def pid_file(self, name: str) -> Path:
        """Where the pid of process ``name`` (server, worker, ...) is kept."""
        return self.home / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        """The log of process ``name``."""
        return self.home / f"{name}.log"

    def running_pid(self, name: str) -> int | None:
        """The pid of process ``name`` while it runs, else None (a stale pid file is
        removed)."""
        path = self.pid_file(name)
        if not path.exists():
            return None
        pid = int(path.read_text().strip())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink()
            return None
        return pid

    def healthy(self) -> bool:
        """Whether the server answers its health check."""
        try:
            with urllib.request.urlopen(self.api_url + "/health", timeout=2) as resp:  # noqa: S310
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start_background(self, name: str, command: list[str], **extra_env: str) -> int:
        """Start a process in its own session (so ``stop`` ends it and its children)."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_file(name).open("ab")
        proc = subprocess.Popen(
            command, cwd=self.project_dir, env=self.env(**extra_env), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.pid_file(name).write_text(str(proc.pid))
        return proc.pid

    def stop(self, name: str, timeout_s: float | None = None) -> bool:
        """SIGTERM the process group we started, SIGKILL it after ``timeout_s`` (by
        default 30 s for the server, which shuts down cleanly, and 5 s for a worker)."""
        if timeout_s is None:
            timeout_s = SERVER_STOP_S if name == "server" else WORKER_STOP_S
        pid = self.running_pid(name)
        if pid is None:
            return False
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _alive(pid):
                    break
                time.sleep(0.2)
            else:
                continue
            break
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def prefect(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a prefect CLI command against this server, from the project folder."""
        result = subprocess.run(
            [prefect_executable(), *args], cwd=self.project_dir, env=self.env(),
            capture_output=True, text=True,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"prefect {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result


def machine_address() -> str:
    """This machine's name as others know it, or its first non-loopback IPv4 address
    when its name resolves to loopback only (as in most containers)."""
    name = socket.getfqdn()
    try:
        if not auth.is_loopback(socket.gethostbyname(name)):
            return name
    except OSError:
        pass
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not auth.is_loopback(address.address):
                return address.address
    return name


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def prefect_executable() -> str:
    """The prefect command of this interpreter's environment (the one that has the
    project's packages), else the one on PATH."""
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def running_db(server: Server) -> str:
    """The database the running server of this home was started on: sqlite or postgres."""
    try:
        return server.db_file.read_text().strip()
    except OSError:
        return "sqlite"  # servers started before the choice existed ran on SQLite


def running_auth(server: Server) -> bool:
    """Whether the running server was started with authentication."""
    return server.auth_marker.exists()
