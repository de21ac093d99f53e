"""``up``, ``down``, ``clean`` and ``status`` of the project's Prefect server.

``up`` starts the server on its database and waits until it is healthy, saves what the
deployments need (server/provisioning.py), deploys them and starts a process worker in
the background; ``down`` stops the worker, the server, then the project's PostgreSQL if it
runs, and lists the local endpoints that keep serving; ``clean`` also deletes the
project's PostgreSQL (server/postgres.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from server import auth
from server.deployments import deployments_in, next_runs, verify
from server.instance import Server, prefect_executable, running_auth, running_db
from server.postgres import Postgres, external_url, redacted
from server.printed_commands import endpoints_command, run_now_command, server_command
from server.provisioning import WORK_POOL, configure

DATABASES = ("sqlite", "postgres")


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
    return {**settings, auth.SERVER_SETTING: server.auth_string}


def start_server(server: Server, timeout_s: float = 180, db: str = "sqlite") -> None:
    """Start the server on ``db`` and wait until it is healthy; a server of this home
    already running on the same database and access is kept."""
    if server.running_pid("server") and server.healthy():
        if running_db(server) != db:
            raise RuntimeError(
                f"the server of {server.home} runs on {running_db(server)}, not {db}; stop "
                f"it first ({server_command('down', server)}) to move it")
        if server.auth_file is not None and not running_auth(server):
            raise RuntimeError(
                f"the server of {server.home} runs without authentication; stop it first "
                f"({server_command('down', server)}) and start it again to turn it on")
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
        [prefect_executable(), "server", "start", "--host", server.host,
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
        [prefect_executable(), "worker", "start", "--pool", WORK_POOL, "--type", "process",
         "--name", worker_name, *(["--limit", str(limit)] if limit else [])],
        **extra,
    )
    print(f"Worker started (pool {WORK_POOL}); log {server.log_file(name)}")


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
    """Stop the worker, the server and the project's PostgreSQL; with ``state_dir``, list
    the local endpoints that keep serving."""
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
    """Pids, health, database and access of this home's server, as ``status`` prints them."""
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
