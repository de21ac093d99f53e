"""Files under the local workspace's state directory: atomic JSON writes, locks, processes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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


# How long a just-started process is given to show its own command line.
STARTING_GRACE_S = 5.0


def process_alive(pid: int | None, marker: str) -> bool:
    """True when ``pid`` runs and its command line holds ``marker``.

    The marker guards against a reused pid after a reboot being taken for our process.
    """
    if not pid:
        return False
    deadline = time.monotonic() + STARTING_GRACE_S
    try:
        proc = psutil.Process(pid)
        while True:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            cmdline = proc.cmdline()
            if marker in " ".join(cmdline):
                return True
            # Popen returns once exec has closed the parent's pipe, but the kernel sets the
            # new command line a moment later: a process a few seconds old may still show
            # an empty (or its parent's) command line. A running job was once declared dead
            # this way; so a young process is read again until it is old enough to judge.
            young = time.time() - proc.create_time() < STARTING_GRACE_S
            if not young or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_process(pid: int | None, marker: str, timeout_s: float = 10.0) -> bool:
    """Terminate our process (SIGTERM, then SIGKILL); True when something was stopped."""
    if not process_alive(pid, marker):
        return False
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    return True


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def spawn_detached(module: str, folder: Path, log_name: str, **env: str) -> int:
    """Run ``python -m module folder`` in its own session, so it outlives its caller.

    Output goes to ``folder/log_name``; the pid is written to ``folder/pid`` and returned.
    """
    with open(folder / log_name, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env(**env),
            cwd=folder,
        )
    (folder / "pid").write_text(str(process.pid))
    return process.pid


def child_env(**overrides: str) -> dict[str, str]:
    """Environment for a detached job or server: this project importable from any cwd."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in paths))
    env.update(overrides)
    return env
