"""Files under the local workspace's state directory: atomic JSON writes, locks, processes.

A detached process (a fine-tune job, an endpoint server) is recorded in its folder's
``process.json`` with an identity token, and runs with an allow-listed environment
(:func:`child_env`), never the whole environment of whoever started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import psutil

from workspaces.fault_injection import hold_after_spawn


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
    """The JSON object in ``path``; None when there is no such file."""
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


# The logs a serving endpoint appends to while nothing else changes: each request's line
# and its server's output.
REQUEST_LOG = "requests.jsonl"
SERVER_LOG = "server.log"


def settled_digest(root: Path, leave_out: Collection[str]) -> str | None:
    """A digest of every file under ``root``: path, size, mode, inode, modification and
    change times, so that a file made, changed, replaced or removed, by a run or by hand
    (``touch -r`` and ``cp -p`` included: they cannot set the change time), changes it.

    ``leave_out`` holds patterns of paths relative to ``root`` (``endpoints/*/server.log``)
    whose files and folders are skipped. None when the digest cannot vouch for the folder:
    a symbolic link to a folder, whose content it does not follow.
    """
    entries = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        relative = here.relative_to(root)
        for name in list(dirs):
            if (here / name).is_symlink():
                return None
            if _left_out(relative / name, leave_out):
                dirs.remove(name)
        dirs.sort()
        for name in sorted(files):
            if _left_out(relative / name, leave_out):
                continue
            try:
                st = (here / name).lstat()
            except FileNotFoundError:  # removed while the folder was read: a change anyway
                continue
            entries.append(f"{relative / name}\0{st.st_size}\0{st.st_mode}\0{st.st_ino}\0"
                           f"{st.st_mtime_ns}\0{st.st_ctime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _left_out(relative: Path, patterns: Collection[str]) -> bool:
    return any(fnmatch.fnmatchcase(relative.as_posix(), pattern) for pattern in patterns)


# A detached process's record, ``process.json``: written before the process exists (with
# an identity token the process gets in its environment), completed with its pid and start
# time right after. It is the one liveness and identity check of every job and server.
PROCESS_FILE = "process.json"
TOKEN_ENV = "CHATFT_PROCESS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
# How long a just-started process is given to show its own command line and environment:
# Popen returns once exec has closed the parent's pipe, but /proc may still show the
# parent's (or an empty) command line a moment later, and a running job judged then would
# be declared dead; so a young process is read again until it is old enough to judge.
STARTING_GRACE_S = 5.0
# A record without a pid counts as a process still starting for this long.
RECORDING_GRACE_S = 30.0
# Only for records written before start ticks were kept: their start time is boot time +
# ticks, and the boot time moves when the clock is stepped, so a mismatch is confirmed
# with the identity token before the process is declared gone.
START_TIME_TOLERANCE_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- clocks no clock step moves ----------------------------------------------------------
# NTP and VM hosts step the wall clock; with it the kernel's boot time (wall clock minus
# uptime) moves, and every start time read as "boot time + ticks" moves too. A process's
# start in clock ticks since boot, and the time since boot, never move: liveness and ages
# are judged on those, within one boot (the boot id tells).
@functools.cache
def boot_id() -> str:
    """This boot's identity: a start tick or a time since boot means something only in it.

    Read once per process (a process never outlives its boot); the request log's activity
    read compares it for every line."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def since_boot() -> float:
    """Seconds since boot, counting suspend; unmoved by clock steps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses;
    # start time is field 22, the 20th after the closing parenthesis.
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def stamp() -> dict[str, Any]:
    """The present moment, on the wall clock (to show) and on the boot clock (to judge)."""
    return {"at": time.time(), "since_boot": since_boot(), "boot_id": boot_id()}


def wall_time(record: dict[str, Any], wall_key: str, boot_key: str) -> float:
    """When ``record[wall_key]`` happened, on today's wall clock.

    A moment written in this boot with its time since boot (``record[boot_key]`` and the
    record's ``boot_id``) is placed that long before now, so a clock stepped since then
    moves it with everything else; an older record keeps the wall time it was written with.
    """
    if record.get(boot_key) is not None and record.get("boot_id") == boot_id():
        return time.time() - (since_boot() - float(record[boot_key]))
    return float(record.get(wall_key) or 0.0)


def seconds_since(record: dict[str, Any], wall_key: str, boot_key: str) -> float:
    """How long ago ``record[wall_key]`` was; judged on the boot clock when it can be."""
    return time.time() - wall_time(record, wall_key, boot_key)


def _cmdline(proc: psutil.Process) -> list[str] | None:
    """The command line of a live process, or None when it is gone, a zombie or not ours."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _carries(proc: psutil.Process, token: str) -> bool:
    try:
        return proc.environ().get(TOKEN_ENV) == token
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _still_starting(proc: psutil.Process, cmdline: list[str]) -> bool:
    """A young process that shows no command line of its own yet (empty, or its parent's)."""
    try:
        ticks = start_ticks(proc.pid)
        if ticks is None or since_boot() - ticks / CLOCK_TICKS >= STARTING_GRACE_S:
            return False
        if not cmdline:
            return True
        parent = proc.parent()
        return parent is not None and parent.cmdline() == cmdline
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def find_processes(folder: Path, module: str, token: str | None = None) -> list[psutil.Process]:
    """Every live process of ``module`` started for ``folder``, recorded or not.

    A process is ours when its command line is ``python -m module folder`` or it carries
    ``token``; one still starting is read again until it shows which it is.
    """
    folder = folder.resolve()
    found: dict[int, psutil.Process] = {}
    unread = [p for p in psutil.process_iter() if p.pid != os.getpid()]
    deadline = time.monotonic() + STARTING_GRACE_S
    while unread:
        starting = []
        for proc in unread:
            cmdline = _cmdline(proc)
            if cmdline is None:
                continue
            if (module in cmdline and str(folder) in cmdline) or (
                token is not None and _carries(proc, token)
            ):
                found[proc.pid] = proc
            elif _still_starting(proc, cmdline):
                starting.append(proc)
        if not starting or time.monotonic() > deadline:
            break
        unread = starting
        time.sleep(0.05)
    return list(found.values())


def _same_process(proc: psutil.Process, record: dict[str, Any]) -> bool:
    """Whether the live ``proc`` is the process ``record`` names (not a reused pid).

    Within the boot that wrote it, the start in clock ticks decides exactly. A record of
    another boot, or one kept before ticks were recorded, is matched by start time, and a
    mismatch (a clock step moves that time) is settled by the identity token it carries.
    """
    ticks = record.get("start_ticks")
    if ticks is not None and record.get("boot_id") == boot_id():
        return start_ticks(proc.pid) == ticks
    try:
        if abs(proc.create_time() - float(record.get("create_time") or 0.0)) <= (
            START_TIME_TOLERANCE_S
        ):
            return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return _carries(proc, record["token"])


def recorded_process(folder: Path) -> psutil.Process | None:
    """The live process the record in ``folder`` names, or None: the liveness check.

    A recorded process is matched by pid and start ticks, fixed at fork and unmoved by
    clock steps: no /proc command line is read, so a process still starting cannot be
    misread, and a reused pid never matches. None is evidence: the pid is gone, a zombie,
    or another process. A record without a pid (its caller died right after starting it)
    is completed from the process that carries the record's token.
    """
    record = read_json(folder / PROCESS_FILE)
    if record is None:
        return None
    pid = record.get("pid")
    if pid:
        try:
            proc = psutil.Process(pid)
            if not _same_process(proc, record):
                return None
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
    carriers = []
    for proc in find_processes(folder, record["module"], record["token"]):
        ticks = start_ticks(proc.pid)
        if ticks is not None and _carries(proc, record["token"]):
            carriers.append((ticks, proc))
    if not carriers:
        return None
    # Its own children inherit the token; the process we started is the oldest of them.
    ticks, proc = min(carriers, key=lambda c: c[0])
    with locked(folder / ".process.lock"):
        current = read_json(folder / PROCESS_FILE) or {}
        if current.get("token") == record["token"] and not current.get("pid"):
            write_json(folder / PROCESS_FILE, {**current, **_identity(proc.pid, ticks)})
    return proc


def _identity(pid: int, ticks: int | None) -> dict[str, Any]:
    try:
        create_time = psutil.Process(pid).create_time()  # shown to people, never compared
    except psutil.NoSuchProcess:
        create_time = 0.0
    return {"pid": pid, "start_ticks": ticks, "boot_id": boot_id(), "create_time": create_time}


def process_alive(folder: Path) -> bool:
    """Whether the process recorded for ``folder`` runs, counting one still being recorded:
    its record has no pid yet, no process carries its token, and its spawner still runs."""
    if recorded_process(folder) is not None:
        return True
    record = read_json(folder / PROCESS_FILE) or {}
    return (
        bool(record)
        and not record.get("pid")
        and seconds_since(record, "spawned_at", "spawned_since_boot") < RECORDING_GRACE_S
        and _spawner_runs(record)
    )


def _spawner_runs(record: dict[str, Any]) -> bool:
    """Whether the process that wrote a pid-less record can still complete it. A record
    written before spawners were recorded is given the grace period alone."""
    spawner = record.get("spawner")
    if not spawner:
        return True
    if record.get("boot_id") != boot_id():
        return False
    try:
        proc = psutil.Process(spawner["pid"])
        return (start_ticks(proc.pid) == spawner["start_ticks"]
                and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_token(folder: Path) -> str | None:
    """The identity token of the process recorded for ``folder``."""
    return (read_json(folder / PROCESS_FILE) or {}).get("token")


# A server proves it is the recorded process without sending its token: the caller sends a
# fresh random challenge in this header, the server answers with identity_proof() of it.
CHALLENGE_HEADER = "X-Chatft-Challenge"
MAX_CHALLENGE_CHARS = 128


def identity_proof(token: str, challenge: str, resource_id: str) -> str:
    """HMAC-SHA256 (hex) of ``challenge`` + ``resource_id`` under the process's ``token``.

    Only the process started with ``token`` and whoever reads its record can make it; a
    fresh challenge each time makes a recorded answer useless to a process that replays it.
    """
    message = (challenge + resource_id).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


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
    procs = {p.pid: p for p in find_processes(folder, module, process_token(folder))}
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
    any point leaves a record that finds it. Output goes to ``folder/log_name``. The process
    gets :func:`child_env` with ``env`` set on top.
    """
    folder = folder.resolve()
    record: dict[str, Any] = {
        "module": module, "token": secrets.token_hex(16), "pid": None, "spawned_at": time.time(),
        "spawned_since_boot": since_boot(), "boot_id": boot_id(),
        # Who completes the record: once it is gone, a record without a pid never will be.
        "spawner": {"pid": os.getpid(), "start_ticks": start_ticks(os.getpid())},
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
    # The crash tests kill a caller here: the process exists, its pid is not recorded yet.
    hold_after_spawn(module, folder)
    record.update(_identity(process.pid, start_ticks(process.pid)))
    write_json(folder / PROCESS_FILE, record)
    return process.pid


# -- the environment of a detached process -----------------------------------------------
# A job or endpoint server gets what it needs to run, never the whole environment of whoever
# started it: a secret there (an Azure client secret, Prefect's API auth string) has no
# business in a process that reads local files and serves 127.0.0.1, where every process
# of its user can read its /proc/<pid>/environ. Neither process imports Prefect or the
# Azure SDK, so no PREFECT_*, AZURE_* or AZUREML_* variable is passed.
CHILD_ENV_NAMES: tuple[str, ...] = (
    # The system: where programs, libraries and the home folder are (Hugging Face's and
    # torch's caches and a `huggingface-cli login` token live under it), who runs, the
    # locale and time zone, where temporary files go.
    "PATH", "LD_LIBRARY_PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ",
    "TMPDIR", "TEMP", "TMP", "XDG_CACHE_HOME",
    # The virtual environment the interpreter belongs to (PYTHON* is a prefix below).
    "VIRTUAL_ENV",
    # Trust roots for TLS: paths, no secret; a job that loads its weights from the hub
    # verifies the hub's certificate with them.
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    # The tokenizers' thread pool (the spawner also sets it for both processes).
    "TOKENIZERS_PARALLELISM",
    # Telemetry opt-outs: MLflow and Hugging Face stay quiet when the starter said so
    # (DO_NOT_TRACK), and MLflow also under CI or a test runner, as it does in the starter.
    "DO_NOT_TRACK", "CI", "PYTEST_CURRENT_TEST",
    # Coverage of subprocesses, when a run measures it.
    "COVERAGE_PROCESS_START",
    # The project's own: where the workspace and the fetched model files are, and a fixed
    # thread count a person gave (thread_budget.py). The other CHATFT_* variables are read
    # only by flows, scripts or the starter itself (the crash tests' holds,
    # workspaces/fault_injection.py), and CHATFT_PROCESS_TOKEN and the thread board are
    # passed as overrides.
    "CHATFT_STATE_DIR", "CHATFT_MODEL_DIR", "CHATFT_THREADS",
)
CHILD_ENV_PREFIXES: tuple[str, ...] = (
    "LC_",  # locale categories
    # The interpreter's own settings: PYTHONPATH (rebuilt below), PYTHONHASHSEED,
    # PYTHONWARNINGS, PYTHONUNBUFFERED, PYTHONNOUSERSITE...: the child imports as the
    # starter does.
    "PYTHON",
    # Thread pools of torch's math libraries (OpenMP, Intel OpenMP and MKL, OpenBLAS) and
    # torch's own settings: a person who limits threads limits the job's and server's too.
    "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "TORCH_", "PYTORCH_",
    # Hugging Face: hub, cache and offline settings, transformers, accelerate (the Trainer).
    "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "ACCELERATE_",
    # MLflow's settings (logging, async logging, telemetry). The processes use the local
    # SQLite store the spec names, so its credentials are never needed (the rule below).
    "MLFLOW_",
)
# What a prefix admits, short of a credential: a name with one of these words (HF_TOKEN,
# MLFLOW_TRACKING_PASSWORD, HF_HUB_DISABLE_IMPLICIT_TOKEN) stays out. Exact names above are
# chosen one by one; overrides (the identity token) always pass.
_SECRET_WORD = re.compile(
    r"(?:^|_)[A-Z0-9]*(?:TOKEN|SECRET|PASSWORD|PASSWD|KEY|AUTH[A-Z]*|CREDENTIAL|COOKIE)S?(?:_|$)"
)
# What only a process that may ask the Hugging Face hub needs (a fine-tune job loading a hub
# model): the hub's credentials (a gated model) and the proxies to reach it, whose URLs may
# hold a password. A process told HF_HUB_OFFLINE (the endpoint server, the evaluator, a job
# on catalog weights) never calls out, so it gets none of them.
HUB_ACCESS_NAMES: tuple[str, ...] = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
)
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub takes as HF_HUB_OFFLINE set


def names_a_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential (HF_TOKEN, ...)."""
    return bool(_SECRET_WORD.search(name.upper()))


def _admitted(name: str) -> bool:
    if name in CHILD_ENV_NAMES:
        return True
    return name.startswith(CHILD_ENV_PREFIXES) and not names_a_secret(name)


def project_pythonpath(current: str | None = None) -> str:
    """``current`` PYTHONPATH (absolute) with this project first: importable from any cwd."""
    paths = [str(PROJECT_ROOT)] + [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in paths))


def child_env(**overrides: str) -> dict[str, str]:
    """Environment for a detached job or server: the allow-listed part of this one.

    Allowed are :data:`CHILD_ENV_NAMES` and names starting with one of
    :data:`CHILD_ENV_PREFIXES` that do not name a credential; :data:`HUB_ACCESS_NAMES`
    only when the result leaves the hub reachable (no HF_HUB_OFFLINE). PYTHONPATH gets
    this project first; ``overrides`` are set last and always pass.
    """
    env = {name: value for name, value in os.environ.items() if _admitted(name)}
    env["PYTHONPATH"] = project_pythonpath(env.get("PYTHONPATH"))
    env.update(overrides)
    if env.get("HF_HUB_OFFLINE", "").strip().upper() not in _TRUE:
        for name in HUB_ACCESS_NAMES:
            if name in os.environ and name not in overrides:
                env[name] = os.environ[name]
    return env
