"""How many math threads a local process may use: the cores shared out by what else computes.

torch starts as many threads as there are cores in every process. A fine-tune job beside an
endpoint server that generates then asks for twice the cores there are, and OpenMP threads
that wait for a core spin instead of yielding: on 2 cores a canary release whose endpoint
served one steady client trained about nine times slower than on idle cores, and the
endpoint answered in 6 s instead of 0.8 s.

So the heavy processes of one workspace (fine-tune jobs, endpoint servers while they
generate, the held-out scorer) keep a board: a file per process under ``<state>/threads``,
or the one ``$CHATFT_THREAD_BOARD`` names for the machine, touched while it computes. Before
each training step or each generation a process counts the others busy in the last
:data:`BUSY_FOR_S` seconds and takes its share of the cores, at least one: alone it has them
all, beside a busy endpoint on 2 cores each has one. A fixed number instead comes from
``$CHATFT_THREADS`` (the local-workspace block's ``threads_per_process`` sets it for the
workspace's processes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BOARD_ENV = "CHATFT_THREAD_BOARD"
FIXED_ENV = "CHATFT_THREADS"
# The board of a workspace when $CHATFT_THREAD_BOARD names none: <state>/threads.
BOARD_DIR = "threads"
# A mark older than this is a process that stopped computing (or died): an endpoint
# between two requests of a steady client stays busy, one left alone frees its cores soon.
BUSY_FOR_S = 5.0
# Touching the mark is a metadata write; once a second is enough for a 5 s window.
TOUCH_EVERY_S = 1.0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fixed_threads(value: str | None, source: str = FIXED_ENV) -> int | None:
    """The fixed thread count ``value`` gives (None when unset); names ``source`` when bad."""
    if value is None or not value.strip():
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{source}={value!r}: give a whole number of threads, 1 or more")
    return threads


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ThreadBudget:
    """One process's share of the cores, read again before each unit of work."""

    def __init__(self, board: Path | None, role: str, fixed: int | None = None,
                 cores: int | None = None) -> None:
        """A budget marked as ``role`` on ``board`` (None: no sharing), ``fixed`` threads
        when given, out of ``cores`` (default: the cores this process may run on)."""
        self.board = board
        self.cores = cores or available_cores()
        self.fixed = fixed
        self.mark = board / f"{role}.{os.getpid()}" if board is not None else None
        self.touched = 0.0
        self.applied: int | None = None

    @classmethod
    def from_env(cls, role: str) -> ThreadBudget:
        """The budget the workspace gave this process through its environment."""
        board = os.environ.get(BOARD_ENV)
        return cls(Path(board) if board else None, role,
                   fixed_threads(os.environ.get(FIXED_ENV)))

    def others_busy(self, now: float | None = None) -> int:
        """How many other processes of the workspace computed in the last BUSY_FOR_S s."""
        if self.board is None:
            return 0
        now = time.time() if now is None else now
        busy = 0
        try:
            entries = list(os.scandir(self.board))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if self.mark is not None and entry.name == self.mark.name:
                continue
            pid = entry.name.rsplit(".", 1)[-1]
            try:
                # Either side of now: a mark in the future was touched before the clock went
                # back, and a process still computing touches it again within a second.
                fresh = abs(now - entry.stat().st_mtime) < BUSY_FOR_S
            except FileNotFoundError:
                continue
            if fresh and pid.isdigit() and _alive(int(pid)):
                busy += 1
        return busy

    def threads(self) -> int:
        """This process's share now: the fixed number, else the cores over the busy ones."""
        if self.fixed is not None:
            return self.fixed
        return max(1, self.cores // (1 + self.others_busy()))

    def busy(self) -> None:
        """Mark this process as computing (at most one write per TOUCH_EVERY_S)."""
        if self.mark is None:
            return
        now = time.monotonic()
        if now - self.touched < TOUCH_EVERY_S:
            return
        try:
            self.mark.parent.mkdir(parents=True, exist_ok=True)
            self.mark.touch()
        except OSError:
            return  # a board that cannot be written costs sharing, never the work
        self.touched = now

    def apply(self, sharers: int = 1) -> int:
        """Mark this process busy and set the calling thread's torch thread count to its
        share, split between ``sharers`` threads of this process computing at once; returns
        it. torch keeps the count per thread once a thread has computed, so each computing
        thread calls this itself, with a budget of its own."""
        import torch

        self.busy()
        threads = max(1, self.threads() // max(1, sharers))
        if threads != self.applied:
            torch.set_num_threads(threads)
            self.applied = threads
        return threads

    @contextmanager
    def marked_busy(self) -> Iterator[None]:
        """Keep this process marked busy from a daemon thread while the block runs (for
        work that cannot stop between units to call :meth:`apply`), released after."""
        stop = threading.Event()

        def touch() -> None:
            while not stop.wait(TOUCH_EVERY_S / 2):
                self.busy()

        self.busy()
        toucher = threading.Thread(target=touch, name="thread-budget-mark", daemon=True)
        toucher.start()
        try:
            yield
        finally:
            stop.set()
            toucher.join()
            self.release()

    def release(self) -> None:
        """This process stops computing for good: its cores go back at once."""
        if self.mark is not None:
            self.mark.unlink(missing_ok=True)
        self.touched = 0.0


def child_settings(root: Path, fixed: int | None) -> dict[str, str]:
    """The environment a workspace gives a process it starts: the board and, when set,
    the fixed count (``fixed``, else ``$CHATFT_THREADS``, checked here rather than in a
    job that would fail on it later).

    The board is the workspace's own (``<state>/threads``) unless ``$CHATFT_THREAD_BOARD``
    names one: a machine running several workspaces at once (the demo's beside a
    worker's, test modules run in parallel) gives them one board, so their processes
    share the cores instead of each taking them all.
    """
    env = {BOARD_ENV: os.environ.get(BOARD_ENV) or str(root / BOARD_DIR)}
    if fixed is None:
        fixed = fixed_threads(os.environ.get(FIXED_ENV))
    if fixed is not None:
        env[FIXED_ENV] = str(fixed)
    return env
