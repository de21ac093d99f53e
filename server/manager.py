"""Run chat-finetune-flows from a Prefect server on this machine.

``up`` starts a local Prefect server, waits until it is healthy, registers this project's
block types, saves the ``local-workspace/default`` block, makes the shared result storage
(block ``local-file-system/chatft-results``, the server's default result storage, so a
worker on any machine finds the cached steps of another), makes sure the smoke-test
notification exists (block ``custom-webhook/chatft-alerts`` and its automation, see
blocks/alerts.py), creates the ``chatft-process`` work pool, deploys every deployment of
prefect.yaml whose flow file exists, and starts a process worker in the background.
``down`` stops the worker, the server, then the project's PostgreSQL if it runs; ``clean``
does that and deletes the project's PostgreSQL (its data, and its placement under
/var/lib when root had to put it there: scripts/postgres_server.py). Pid files and logs
live in the Prefect home folder.

The database: SQLite in the home folder for one person (``--db sqlite``, the default), or
PostgreSQL for a team (``--db postgres``): the project's own (scripts/postgres_server.py,
its data under the home folder, its port chosen free and printed), or the team's when
``PREFECT_API_DATABASE_CONNECTION_URL`` is set (its password never printed).

    python scripts/local_server.py up        # UI at http://127.0.0.1:4200
    python scripts/local_server.py up --db postgres
    python scripts/local_server.py status
    python scripts/local_server.py down
    python scripts/local_server.py clean     # down, and delete the project's PostgreSQL

Endpoints started by flow runs keep serving after ``down`` (they belong to the workspace,
not to the server); ``down`` lists them with the commands that stop or delete them. Every
command ``up`` and ``down`` print can be pasted as it is: it names the interpreter, the
port, the Prefect home and the state folder in use.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import yaml

from blocks import alerts
from server import auth as server_auth
from server.postgres import Postgres, external_url, redacted

PROJECT_DIR = Path(__file__).resolve().parent.parent

WORK_POOL = "chatft-process"
BLOCK_NAME = "default"
RESULTS_BLOCK = "chatft-results"
DATABASES = ("sqlite", "postgres")
# Database settings go to the server process alone: a worker, a flow run or a prefect
# command talks to the API and must not hold the database password.
DATABASE_SETTINGS = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_")
# An auth string in the starter's environment is another server's: this server's own comes
# from its auth file (scripts/server_auth.py) and goes only where it is needed.
AUTH_SETTINGS = (server_auth.SERVER_SETTING, server_auth.CLIENT_SETTING)
# How long a stop waits after SIGTERM before SIGKILL. Prefect's server shuts down cleanly.
# Its worker (3.8.8) never exits on SIGTERM, even idle: its handler turns the first signal
# into an interrupt it does not act on and the next one into SIGKILL (seen by hand here),
# so a long wait only delayed the same kill. Flow runs it starts with Prefect's default
# command run in a session of their own, outside the group this kills.
SERVER_STOP_S = 30.0
WORKER_STOP_S = 5.0
# A server bound to one of these listens on every interface of the machine.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 - names of binds, not a bind
BLOCK_MODULES = ("blocks.local_workspace", "blocks.azure_credentials", "blocks.azure_ml_workspace")


class Server:
    """Where the server and worker of one Prefect home live, and how to reach them."""

    def __init__(
        self, home: Path, host: str, port: int, project_dir: Path = PROJECT_DIR,
        extra_env: dict[str, str] | None = None, auth_file: Path | None = None,
        public_url: str | None = None,
    ):
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
        return f"http://{self.local_host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.local_host}:{self.port}"

    @property
    def reached_from_elsewhere(self) -> bool:
        """Whether people or workers on other machines reach the server: it listens
        beyond loopback, or a public URL (a proxy's) leads to it."""
        return self._public_url is not None or not server_auth.is_loopback(self.host)

    @functools.cached_property
    def public_url(self) -> str:
        """Where people and workers on other machines reach the server (``--public-url``,
        e.g. the TLS proxy's https address; else this machine's name when it listens
        beyond loopback). Looked up once: the name may take a DNS query."""
        if self._public_url:
            return self._public_url
        if server_auth.is_loopback(self.host):
            return self.ui_url
        name = _machine_address() if self.host in WILDCARD_HOSTS else self.host
        return f"http://{name}:{self.port}"

    @functools.cached_property
    def auth_string(self) -> str | None:
        return None if self.auth_file is None else server_auth.read(self.auth_file)

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
            env[server_auth.CLIENT_SETTING] = self.auth_string
        env.update(self.extra_env)
        env.update(extra)
        return env

    def headers(self) -> dict[str, str]:
        """What a call of this server's API carries: the auth string, and the CSRF token
        once the server asked for one (see ``api``)."""
        headers = {"Content-Type": "application/json"}
        if self.auth_string is not None:
            headers["Authorization"] = server_auth.basic_header(self.auth_string)
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
        return self.home / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def running_pid(self, name: str) -> int | None:
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
            [_prefect_executable(), *args], cwd=self.project_dir, env=self.env(),
            capture_output=True, text=True,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"prefect {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result


def _machine_address() -> str:
    """This machine's name as others know it, or its first non-loopback IPv4 address
    when its name resolves to loopback only (as in most containers)."""
    name = socket.getfqdn()
    try:
        if not server_auth.is_loopback(socket.gethostbyname(name)):
            return name
    except OSError:
        pass
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not server_auth.is_loopback(address.address):
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


def _prefect_executable() -> str:
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def deployments_in(project_dir: Path) -> list[dict]:
    """The deployments of prefect.yaml, each with ``present`` = its flow file exists."""
    config = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    found = []
    for deployment in config.get("deployments") or []:
        path = deployment["entrypoint"].split(":", 1)[0]
        found.append({**deployment, "present": (project_dir / path).exists()})
    return found


def database_settings(server: Server, db: str) -> dict[str, str]:
    """The server process's database settings; for ``postgres`` the project's PostgreSQL
    is started (or the team's, given by URL, is used)."""
    if db not in DATABASES:
        raise ValueError(f"--db: {db!r} is not a database this server runs on; allowed: "
                         f"{', '.join(DATABASES)}")
    if db == "sqlite":
        print(f"Database: SQLite, {server.home / 'prefect.db'}")
        return {}
    url = external_url()
    if url is not None:
        print(f"Database: the team's PostgreSQL, {redacted(url)} (from "
              "PREFECT_API_DATABASE_CONNECTION_URL)")
        return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url}
    postgres = Postgres(server.home)
    port, started = postgres.start()
    print(f"PostgreSQL {'started' if started else 'already running'} on 127.0.0.1:{port} "
          f"(data {postgres.data}, log {postgres.log_file}); database {postgres.url(port)}")
    return postgres.settings(port)


def running_db(server: Server) -> str:
    try:
        return server.db_file.read_text().strip()
    except OSError:
        return "sqlite"  # servers started before the choice existed ran on SQLite


def auth_settings(server: Server) -> dict[str, str]:
    """The server process's access settings: the auth string, and the addresses the UI
    gives browsers on other machines."""
    settings = {}
    if server.reached_from_elsewhere:
        settings["PREFECT_UI_API_URL"] = f"{server.public_url}/api"
        settings["PREFECT_UI_URL"] = server.public_url  # links in notifications
    if server.auth_string is None:
        return settings
    # Prefect's CSRF protection stays as the starter's environment sets it (off by
    # default): the UI and every client send the auth string from script, never as a
    # browser credential a forged page could ride on, so CSRF tokens add no protection;
    # and Prefect checks them before the auth string, so a stranger's request got 403
    # instead of 401 and every read-only filter (a POST) needed a token first. ``api``
    # speaks it when a team turns it on (docs/server.md, "Authentication").
    return {**settings, server_auth.SERVER_SETTING: server.auth_string}


def running_auth(server: Server) -> bool:
    """Whether the running server was started with authentication."""
    return server.auth_marker.exists()


def start_server(server: Server, timeout_s: float = 180, db: str = "sqlite") -> None:
    if server.running_pid("server") and server.healthy():
        if running_db(server) != db:
            raise RuntimeError(
                f"the server of {server.home} runs on {running_db(server)}, not {db}; stop "
                f"it first (chatft server down) to move it")
        if server.auth_file is not None and not running_auth(server):
            raise RuntimeError(
                f"the server of {server.home} runs without authentication; stop it first "
                f"(chatft server down) and start it again to turn it on")
        print(f"Server already running at {server.ui_url} ({db})")
        if db == "postgres" and external_url() is None:
            database_settings(server, db)  # PostgreSQL too: started again if it died
        return
    if server.healthy():
        raise RuntimeError(f"something else already answers on {server.api_url}; pick --port")
    settings = database_settings(server, db)
    print(f"Starting Prefect server at {server.ui_url} (home {server.home})")
    server.auth_marker.unlink(missing_ok=True)
    server.start_background(
        "server",
        [_prefect_executable(), "server", "start", "--host", server.host,
         "--port", str(server.port)],
        **settings, **auth_settings(server),
    )
    server.db_file.write_text(db + "\n")
    if server.auth_file is not None:
        server.auth_marker.write_text(f"{server.auth_file}\n")
    deadline = time.monotonic() + timeout_s
    while not server.healthy():
        if server.running_pid("server") is None:
            raise RuntimeError(f"server exited; see {server.log_file('server')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not healthy after {timeout_s:.0f} s; see "
                               f"{server.log_file('server')}")
        time.sleep(0.5)


# A busy SQLite-backed server answers 503 while its database is locked (a worker and the
# scheduler write at the same moment); `up` once died on such a PATCH and left a
# deployment half-configured. These are retried, with back-off, for up to about a minute.
BUSY_STATUSES = (429, 503)
API_ATTEMPTS = 8


def api(server: Server, method: str, path: str, body: object = None) -> object:
    """One call of the server's REST API; the parsed JSON answer (None when empty).

    A busy answer (503, 429) is tried again, after its Retry-After or a growing pause.
    """
    for attempt in range(API_ATTEMPTS):
        request = urllib.request.Request(  # noqa: S310 - our own server's http URL
            server.api_url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=server.headers(),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - ours
                text = resp.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            # A server with CSRF protection on refuses a change without a token (403,
            # "Missing CSRF token."): get one, once, and send the call again.
            if exc.code == 403 and server._csrf is None and b"CSRF" in exc.read():
                server.fetch_csrf_token()
                continue
            if exc.code not in BUSY_STATUSES or attempt == API_ATTEMPTS - 1:
                raise
            pause = _retry_after(exc) or min(0.5 * 2**attempt, 15.0)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    try:
        return min(float(exc.headers.get("Retry-After", "")), 15.0)
    except ValueError:
        return None


def refuse_unknown_parameters(server: Server, deployment: dict) -> None:
    """Make the server refuse a run whose parameters hold a name the flow does not take.

    Prefect builds the schema from the flow's signature without ``additionalProperties``,
    so ``{"dry_run": true}`` (a field of ``request``, misplaced) would be accepted and
    fail only when the run starts. The request models refuse unknown fields themselves.
    """
    found = api(server, "GET", f"/deployments/name/{full_name(deployment)}")
    schema = dict(found["parameter_openapi_schema"] or {})
    if schema.get("properties") and schema.get("additionalProperties") is not False:
        schema["additionalProperties"] = False
        api(server, "PATCH", f"/deployments/{found['id']}",
            {"parameter_openapi_schema": schema})


# A parameter no flow takes: a run asked with it must be refused (409) by the server.
UNKNOWN_PARAMETER_PROBE = {"chatft_up_check_unknown_parameter": True}


def full_name(deployment: dict) -> str:
    """``<flow name>/<deployment name>`` of a prefect.yaml deployment."""
    flow_name = deployment["entrypoint"].rsplit(":", 1)[1].replace("_", "-")
    return f"{flow_name}/{deployment['name']}"


def deployment_id(server: Server, deployment: dict) -> str:
    return api(server, "GET", f"/deployments/name/{full_name(deployment)}")["id"]


def refuses_unknown_parameters(server: Server, deployment: dict) -> bool:
    """Ask the server for a run with an unknown parameter: True when it refuses (409).

    A run it accepted is deleted at once (it could only fail), so the check leaves nothing.
    """
    found = deployment_id(server, deployment)
    try:
        run = api(server, "POST", f"/deployments/{found}/create_flow_run",
                  {"parameters": UNKNOWN_PARAMETER_PROBE})
    except urllib.error.HTTPError as refused:
        if refused.code == 409:
            return True
        raise
    api(server, "DELETE", f"/flow_runs/{run['id']}")
    return False


def verify(server: Server, deployed: list[dict]) -> list[str]:
    """What a person relies on after ``up``, checked against the server itself.

    Each deployment refuses unknown parameters (repaired once if not: an earlier ``up``
    may have died between deploy and PATCH), and the notification automation exists once.
    Raises RuntimeError naming what is still wrong; returns the lines to print.
    """
    lines = []
    for deployment in deployed:
        if not refuses_unknown_parameters(server, deployment):
            refuse_unknown_parameters(server, deployment)
            if not refuses_unknown_parameters(server, deployment):
                raise RuntimeError(
                    f"deployment {deployment['name']} still accepts unknown parameters; "
                    f"see {server.log_file('server')}")
    if deployed:
        lines.append("Checked: " + ", ".join(d["name"] for d in deployed)
                     + " refuse a run with an unknown parameter (409)")
    automations = [a for a in api(server, "POST", "/automations/filter", {}) or []
                   if a["name"] == alerts.AUTOMATION_NAME]
    if len(automations) != 1:
        raise RuntimeError(f"expected one automation {alerts.AUTOMATION_NAME!r}, "
                           f"found {len(automations)}")
    state = "enabled" if automations[0]["enabled"] else (
        f"disabled until block custom-webhook/{alerts.BLOCK_NAME} has a URL")
    lines.append(f"Checked: automation {alerts.AUTOMATION_NAME!r} exists ({state})")
    return lines


def next_runs(server: Server, deployed: list[dict], now: datetime | None = None) -> list[str]:
    """When each active schedule of the deployments first fires, as the scheduler sees it.

    The dates come from the server's own schedule classes over the schedules the server
    holds, so a schedule edited in the UI is reported as edited.
    """
    from prefect.server.schemas.schedules import SCHEDULE_TYPES
    from pydantic import TypeAdapter

    now = now or datetime.now(UTC)
    parse = TypeAdapter(SCHEDULE_TYPES).validate_python
    lines = []
    for deployment in deployed:
        found = api(server, "GET", f"/deployments/name/{full_name(deployment)}")
        if found.get("paused"):
            lines.append(f"{deployment['name']}: paused")
            continue
        dates = []
        for entry in found.get("schedules") or []:
            if entry.get("active"):
                dates += asyncio.run(parse(entry["schedule"]).get_dates(n=1, start=now))
        if not dates:
            lines.append(f"{deployment['name']}: no schedule (start it from the UI)")
            continue
        first = min(dates).astimezone(UTC)
        minutes = max(0, round((first - now).total_seconds() / 60))
        lines.append(f"{deployment['name']}: first scheduled run at "
                     f"{first:%Y-%m-%d %H:%M} UTC (in {minutes} min)")
    return lines


def client_command(server: Server, *words: str, api_url: str | None = None) -> str:
    """A command of a Prefect client of this server, pasteable in a POSIX shell: the API
    address and the auth string (read from its file by that shell, never shown) are given
    as assignments, which stay out of the command's arguments and so out of ``ps``."""
    return (f"PREFECT_API_URL={shlex.quote(api_url or server.api_url)} "
            + server_auth.client_prefix(server.auth_file) + shlex.join(words))


def run_now_command(server: Server, deployment: dict) -> str:
    """``prefect deployment run`` of ``deployment`` on this server, pasteable."""
    return client_command(server, _prefect_executable(), "deployment", "run",
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
                     f"read it from that file: {server_auth.CLIENT_SETTING}=\"$(cat FILE)\"")
    if not server_auth.is_loopback(server.host) and not server.public_url.startswith("https:"):
        lines.append(
            f"WARNING: the server listens on {server.host} over plain HTTP: the auth string "
            "and every block's secrets cross the network readable by anyone on it. Put a "
            "TLS proxy in front, listen on 127.0.0.1 behind it and give --public-url "
            "https://... (docs/server.md, \"TLS\").")
    if server.reached_from_elsewhere:
        lines.append(f"A worker on another machine (copy {server.auth_file} there first, "
                     f"mode 0600):\n  {worker_command(server)}")
    return lines


def save_server_objects(state_dir: Path, results_dir: Path | None) -> dict[str, str | None]:
    """Run in a child that talks to the server: the project's block types, block
    ``local-workspace/default``, the result storage block when ``results_dir`` is given,
    the smoke-test notification and the work pool. Returns what the parent reports."""
    import importlib
    import inspect

    from prefect.blocks.core import Block, InvalidBlockRegistration
    from prefect.filesystems import LocalFileSystem

    from blocks.local_workspace import LocalWorkspaceBlock

    for module in BLOCK_MODULES:  # what `prefect block register -m` does, per module
        for _, cls in inspect.getmembers(importlib.import_module(module)):
            if Block.is_block_class(cls):
                try:
                    cls.register_type_and_schema()
                except InvalidBlockRegistration:
                    pass
    LocalWorkspaceBlock(state_dir=str(state_dir)).save(BLOCK_NAME, overwrite=True)
    storage = (str(LocalFileSystem(basepath=str(results_dir)).save(RESULTS_BLOCK,
                                                                   overwrite=True))
               if results_dir is not None else None)
    block, automation, enabled = alerts.ensure_smoke_test_alert(
        os.environ.get(alerts.URL_ENV) or None)
    return {"storage_block_id": storage, "work_pool": asyncio.run(_ensure_work_pool()),
            "alerts": alerts.summary(block, automation, enabled)}


async def _ensure_work_pool() -> str:
    """The process work pool with Prefect's default job template, made when missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    async with get_client() as client:
        try:
            await client.read_work_pool(WORK_POOL)
            return "present"
        except ObjectNotFound:
            pass
        template = await get_default_base_job_template_for_infrastructure_type("process")
        try:
            await client.create_work_pool(WorkPoolCreate(
                name=WORK_POOL, type="process", base_job_template=template or {}))
        except ObjectAlreadyExists:  # another up made it meanwhile
            return "present"
        return "created"


def _run_server_objects(server: Server, state_dir: Path,
                        results_dir: Path | None) -> dict[str, str | None]:
    """save_server_objects in one child process (a prefect import costs seconds, so the
    eleven prefect commands this took are one process)."""
    code = ("import json, sys; from pathlib import Path; from server import manager as s; "
            "r = Path(sys.argv[2]) if sys.argv[2] else None; "
            "print(json.dumps(s.save_server_objects(Path(sys.argv[1]), r)))")
    result = subprocess.run(
        [sys.executable, "-c", code, str(state_dir.resolve()),
         str(results_dir.resolve()) if results_dir else ""],
        cwd=server.project_dir, env=server.env(), capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError("saving the blocks, the notification and the work pool failed:\n"
                           f"{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def results_block_wanted(server: Server) -> tuple[bool, str | None]:
    """Whether ``up`` saves its result storage block (False when the server's default is
    another block, kept), and the id of ours when it is the default already."""
    current = (api(server, "GET", "/admin/storage") or {}).get("default_result_storage_block_id")
    if not current:
        return True, None
    block = api(server, "GET", f"/block_documents/{current}")
    slug = f"{block['block_type']['slug']}/{block['name']}"
    if slug != f"local-file-system/{RESULTS_BLOCK}":
        print(f"Result storage: {slug} (this server's default, kept)")
        return False, None
    return True, current


def configure(server: Server, state_dir: Path, results_dir: Path | None = None) -> list[str]:
    """Blocks, the block document, result storage, the notification, the work pool and
    the deployments; returns those deployed."""
    results_dir = (results_dir or server.home / "results").resolve()
    wanted, ours = results_block_wanted(server)
    if wanted:
        results_dir.mkdir(parents=True, exist_ok=True)
    saved = _run_server_objects(server, state_dir, results_dir if wanted else None)
    print(f"Block local-workspace/{BLOCK_NAME}: state_dir {state_dir.resolve()}")
    if wanted:
        if saved["storage_block_id"] != ours:
            api(server, "PUT", "/admin/storage",
                {"default_result_storage_block_id": saved["storage_block_id"]})
        print(f"Result storage: local-file-system/{RESULTS_BLOCK} at {results_dir} "
              "(this server's default: every worker must see this folder at this path)")
    print(saved["alerts"])
    deployments = []
    for deployment in deployments_in(server.project_dir):
        if deployment["present"]:
            deployments.append(deployment)
        else:
            print(f"Skipping deployment {deployment['name']}: "
                  f"{deployment['entrypoint']} does not exist yet")
    if deployments:
        # One process for all of them: each `prefect deploy` spends seconds importing.
        names = [word for d in deployments for word in ("--name", d["name"])]
        server.prefect("--no-prompt", "deploy", *names)
    for deployment in deployments:
        refuse_unknown_parameters(server, deployment)
        print(f"Deployed {deployment['name']}")
    return [d["name"] for d in deployments]


def start_worker(
    server: Server, query_seconds: float | None = None, *, name: str = "worker",
    worker_name: str = "chatft-local-worker", home: Path | None = None,
    limit: int | None = None,
) -> None:
    """A process worker of the pool in the background; ``name`` names its pid and log
    files, ``home`` gives it a Prefect home of its own (as on another machine) and
    ``limit`` caps the flow runs it runs at once."""
    if server.running_pid(name):
        print("Worker already running")
        return
    extra = {"PREFECT_WORKER_QUERY_SECONDS": str(query_seconds)} if query_seconds else {}
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        extra["PREFECT_HOME"] = str(home)
    server.start_background(
        name,
        [_prefect_executable(), "worker", "start", "--pool", WORK_POOL, "--type", "process",
         "--name", worker_name, *(["--limit", str(limit)] if limit else [])],
        **extra,
    )
    print(f"Worker started (pool {WORK_POOL}); log {server.log_file(name)}")


def server_command(command: str, server: Server, state_dir: Path) -> str:
    """``command`` (up, down, status) as a person can paste it: this interpreter (the one
    that has the project's packages), this script, and the options in use."""
    return shlex.join([
        sys.executable, "-m", "server", command, "--host", server.host,
        "--port", str(server.port), "--home", str(server.home),
        "--state-dir", str(state_dir.resolve()), "--db", running_db(server),
    ])


def endpoints_command(state_dir: Path, *words: str) -> str:
    """A local endpoints command (``chatft``) for the workspace in ``state_dir``, pasteable."""
    return shlex.join([sys.executable, "-m", "workspaces.local.cli", "--state-dir",
                       str(state_dir.resolve()), "endpoints", *words])


def up(
    server: Server, state_dir: Path, query_seconds: float | None = None, db: str = "sqlite",
    results_dir: Path | None = None,
) -> list[str]:
    """Start or repair everything; safe to run again on the same home, runs in flight."""
    start_server(server, db=db)
    deployed = configure(server, state_dir, results_dir)
    start_worker(server, query_seconds)
    made = [d for d in deployments_in(server.project_dir) if d["name"] in deployed]
    for line in verify(server, made):
        print(line)
    print("\nSchedules:")
    for line in next_runs(server, made):
        print(f"  {line}")
    smoke = [d for d in made if d["name"] == "smoke-test-endpoints"]
    if smoke:
        print(f"Run the first smoke test now:  {run_now_command(server, smoke[0])}")
    return deployed


def down(server: Server, state_dir: Path | None = None) -> None:
    for name in ("worker", "server"):
        print(f"Stopped {name}" if server.stop(name) else f"No {name} running")
    server.auth_marker.unlink(missing_ok=True)
    # The project's PostgreSQL goes last, once nothing is connected to it.
    if Postgres(server.home).stop():
        print("Stopped PostgreSQL")
    if state_dir is not None:
        report_endpoints(server, state_dir)


def clean(server: Server) -> None:
    """``down``, then delete this home's PostgreSQL: its cluster (every flow run,
    deployment and block on it), its password and its placement under /var/lib."""
    down(server)
    for path in Postgres(server.home).remove():
        print(f"Removed {path}")


def report_endpoints(server: Server, state_dir: Path) -> None:
    """Endpoints are processes of the workspace, not of the server: say which keep serving."""
    listing = subprocess.run(
        [sys.executable, "-m", "workspaces.local.cli", "--state-dir", str(state_dir.resolve()),
         "endpoints", "list"],
        cwd=server.project_dir, env=server.env(), capture_output=True, text=True,
    )
    text = listing.stdout.strip()
    if listing.returncode != 0 or not text or text.startswith("no local endpoints"):
        print(f"No local endpoint in {state_dir}" if listing.returncode == 0
              else f"Could not list local endpoints: {listing.stderr.strip()[-300:]}")
        return
    print("\nThese local endpoints keep serving (they belong to the workspace, not to the "
          "server):\n" + text)
    print(f"Stop one and keep it:   {endpoints_command(state_dir, 'stop', 'NAME')}\n"
          f"Serve it again later:   {endpoints_command(state_dir, 'restart', 'NAME')}\n"
          f"Stop and delete them:   {endpoints_command(state_dir, 'delete', '--all')}")


def status(server: Server) -> dict[str, object]:
    postgres = Postgres(server.home)
    return {
        "ui": server.ui_url,
        "home": str(server.home),
        "server_pid": server.running_pid("server"),
        "healthy": server.healthy(),
        "worker_pid": server.running_pid("worker"),
        "database": running_db(server),
        "auth_file": str(server.auth_file) if running_auth(server) else None,
        "postgres_port": postgres.running_port(),
        "postgres_data": str(postgres.data),
        "postgres_placement": str(placement) if (placement := postgres.placement) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "clean"])
    env = os.environ.get
    parser.add_argument("--home", type=Path,
                        default=Path(env("CHATFT_PREFECT_HOME", PROJECT_DIR / ".prefect")),
                        help="PREFECT_HOME: database, pid files and logs (default ./.prefect)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env("CHATFT_PREFECT_PORT", "4200")))
    parser.add_argument("--state-dir", type=Path,
                        default=Path(env("CHATFT_STATE_DIR", PROJECT_DIR / ".workspace")),
                        help="state_dir of block local-workspace/default (default ./.workspace)")
    parser.add_argument("--worker-query-seconds", type=float, default=None,
                        help="how often the worker polls for runs (Prefect's default: 10)")
    parser.add_argument("--db", choices=DATABASES, default=env("CHATFT_DB", "sqlite"),
                        help="sqlite (one person) or postgres (a team: the project's own "
                        "PostgreSQL, or PREFECT_API_DATABASE_CONNECTION_URL's)")
    parser.add_argument("--results-dir", type=Path,
                        default=Path(env("CHATFT_RESULTS_DIR")) if env("CHATFT_RESULTS_DIR")
                        else None,
                        help="shared result storage folder, mounted at the same path on "
                        "every worker machine (default <home>/results)")
    parser.add_argument("--auth", action="store_true",
                        help="authentication on loopback too (always on beyond loopback)")
    parser.add_argument("--auth-file", type=Path, default=None,
                        help="a team's own auth string (one line, mode 0600) instead of "
                        "the one generated into <home>/auth-string")
    parser.add_argument("--public-url", default=env("CHATFT_PUBLIC_URL"),
                        help="where others reach the server, e.g. its TLS proxy "
                        "https://prefect.example.internal (default http://<this host>:PORT)")
    args = parser.parse_args()
    try:
        # A public URL means others reach the server (through a proxy on this machine,
        # say), so it asks for the auth string even when it listens on loopback.
        auth_file = (server_auth.resolve(args.home.resolve(), args.host, args.auth_file,
                                         args.auth or bool(args.public_url))
                     if args.command == "up" else server_auth.recorded(args.home.resolve()))
    except server_auth.AuthError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    server = Server(args.home, args.host, args.port, auth_file=auth_file,
                    public_url=args.public_url)
    if args.command == "up":
        deployed = up(server, args.state_dir, args.worker_query_seconds, args.db,
                      args.results_dir)
        print(f"\nPrefect UI: {server.public_url}   deployments: "
              f"{', '.join(deployed) or 'none'}")
        for line in access_lines(server):
            print(line)
        print(f"Use it from this shell:  export PREFECT_API_URL={server.api_url}")
        if server.auth_file is not None:
            print(f"                         export "
                  f"{server_auth.client_prefix(server.auth_file).strip()}")
        print(f"Stop it:                 {server_command('down', server, args.state_dir)}")
    elif args.command == "down":
        down(server, args.state_dir)
    elif args.command == "clean":
        clean(server)
    else:
        print(json.dumps(status(server), indent=2))


if __name__ == "__main__":
    main()
