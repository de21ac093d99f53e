"""Files under the local workspace's state directory: atomic JSON writes, locks, processes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


def write_json(path: Path, data: dict[str, Any], private: bool = False) -> None:
    """Write JSON atomically (readers never see half a file); ``private`` makes it 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# A detached process's record: written before the process exists, completed with its
# pid and start time right after. The start time (fixed at fork) is its identity: it
# cannot race a process that is still starting, and a reused pid never matches it.
PROCESS_FILE = "process.json"
TOKEN_ENV = "CHATFT_PROCESS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
# Tests hold a flow here (after the process exists, before its pid is recorded) to kill it.
HOLD_ENV = "CHATFT_HOLD_AFTER_SPAWN"


def _matches(proc: psutil.Process, folder: Path, module: str) -> bool:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return module in cmdline and str(folder) in cmdline


def find_processes(folder: Path, module: str) -> list[psutil.Process]:
    """Every running process of ``module`` started for ``folder``, recorded or not."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid != os.getpid() and _matches(proc, folder, module):
            found.append(proc)
    return found


def recorded_process(folder: Path) -> psutil.Process | None:
    """The live process the record in ``folder`` names, or None.

    A record without a pid (the caller died right after starting it) is completed from
    the process that carries the record's token.
    """
    record = read_json(folder / PROCESS_FILE)
    if record is None:
        return None
    pid = record.get("pid")
    if pid:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - record["create_time"]) > 0.05:
                return None
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
    for proc in find_processes(folder, record["module"]):
        try:
            if proc.environ().get(TOKEN_ENV) == record["token"]:
                record.update(pid=proc.pid, create_time=proc.create_time())
                write_json(folder / PROCESS_FILE, record)
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def process_running(folder: Path, grace_s: float = 30.0) -> bool:
    """Whether the recorded process runs, counting one whose start is still being recorded."""
    if recorded_process(folder) is not None:
        return True
    record = read_json(folder / PROCESS_FILE) or {}
    return bool(record) and not record.get("pid") and time.time() - record["spawned_at"] < grace_s


def process_token(folder: Path) -> str | None:
    """The identity token of the process recorded for ``folder``."""
    return (read_json(folder / PROCESS_FILE) or {}).get("token")


def _terminate(procs: list[psutil.Process], timeout_s: float) -> None:
    for proc in procs:
        # Each detached process leads its own session: end its children with it.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_processes(folder: Path, module: str, timeout_s: float = 10.0) -> int:
    """End every process of ``module`` for ``folder`` (SIGTERM, then SIGKILL); how many."""
    procs = {p.pid: p for p in find_processes(folder, module)}
    recorded = recorded_process(folder)
    if recorded is not None:
        procs[recorded.pid] = recorded
    _terminate(list(procs.values()), timeout_s)
    return len(procs)


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def spawn_detached(module: str, folder: Path, log_name: str, **env: str) -> int:
    """Run ``python -m module folder`` in its own session, so it outlives its caller.

    The record (``folder/process.json``, with a fresh identity token the process gets in
    ``$CHATFT_PROCESS_TOKEN``) is written before the process starts, so a caller killed at
    any point leaves a record that finds it. Output goes to ``folder/log_name``.
    """
    folder = folder.resolve()
    record: dict[str, Any] = {
        "module": module, "token": secrets.token_hex(16), "pid": None, "spawned_at": time.time(),
    }
    write_json(folder / PROCESS_FILE, record)
    with open(folder / log_name, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env(**{TOKEN_ENV: record["token"], **env}),
            cwd=folder,
        )
    hold = os.environ.get(HOLD_ENV)
    if hold and hold == module:
        (folder / ".held").touch()
        time.sleep(3600)
    try:
        create_time = psutil.Process(process.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0
    record.update(pid=process.pid, create_time=create_time)
    write_json(folder / PROCESS_FILE, record)
    return process.pid


def child_env(**overrides: str) -> dict[str, str]:
    """Environment for a detached job or server: this project importable from any cwd."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in paths))
    env.update(overrides)
    return env
