"""A process we just started is alive to the liveness check, never taken for a dead one;
a process the record does not name (a reused pid) is never taken for ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from tests.helpers import PROJECT_DIR
from workspaces.fault_injection import SPAWN_HOLD_ENV, SPAWN_MARKER
from workspaces.local.state import (
    PROCESS_FILE,
    find_processes,
    process_alive,
    read_json,
    recorded_process,
    spawn_detached,
    write_json,
)

IDLE = "tests.workspaces.local.idle_process"


def test_every_fresh_start_is_seen_alive(tmp_path):
    # The check runs at once, as the flow's first job read does right after submission;
    # before the fix about one start in eight was reported dead on a busy machine.
    misread = []
    pids = []
    try:
        for i in range(40):
            folder = tmp_path / f"p{i}"
            folder.mkdir()
            pids.append(spawn_detached(IDLE, folder, "log"))
            if not process_alive(folder):
                misread.append(i)
    finally:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert misread == []


def test_a_reused_pid_or_another_folder_is_not_ours(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pid = spawn_detached(IDLE, tmp_path / "a", "log")
    try:
        assert process_alive(tmp_path / "a")
        assert not process_alive(tmp_path / "b")
        # A record naming the same pid with another start is a different process.
        record = read_json(tmp_path / "a" / PROCESS_FILE)
        write_json(tmp_path / "b" / PROCESS_FILE,
                   {**record, "start_ticks": record["start_ticks"] + 1, "create_time": 1.0})
        assert recorded_process(tmp_path / "b") is None
        assert not process_alive(tmp_path / "b")
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_a_start_its_caller_never_recorded_is_found_by_its_token(tmp_path):
    # The caller died between starting the process and writing its pid: the record has
    # only the token, and the process that carries it is adopted, even while it starts.
    folder = tmp_path / "orphan"
    folder.mkdir()
    pid = spawn_detached(IDLE, folder, "log")
    try:
        record = read_json(folder / PROCESS_FILE)
        write_json(folder / PROCESS_FILE, {**record, "pid": None, "create_time": None,
                                           "spawned_at": 0.0})
        assert [p.pid for p in find_processes(folder, IDLE, record["token"])] == [pid]
        assert recorded_process(folder).pid == pid
        assert read_json(folder / PROCESS_FILE)["pid"] == pid
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_a_start_whose_caller_and_process_both_died_is_dead_at_once(tmp_path):
    # A run killed between starting a server and recording its pid, and the server gone
    # too (killed with it, or crashed): the record has only the token, and nothing will
    # ever complete it. The re-run right after must start a new one, not wait for this.
    folder = tmp_path / "orphan"
    folder.mkdir()
    caller = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from workspaces.local."
         "state import spawn_detached; spawn_detached(sys.argv[1], Path(sys.argv[2]), 'log')",
         IDLE, str(folder)],
        env={**os.environ, SPAWN_HOLD_ENV: IDLE}, cwd=PROJECT_DIR,
    )
    try:
        deadline = time.monotonic() + 60
        while not (folder / SPAWN_MARKER).exists():
            assert time.monotonic() < deadline and caller.poll() is None
            time.sleep(0.05)
        record = read_json(folder / PROCESS_FILE)
        (started,) = [p for p in find_processes(folder, IDLE, record["token"])
                      if p.pid != caller.pid]
        # while its caller lives, the start is under way
        started.kill()
        psutil.wait_procs([started], timeout=10)
        assert process_alive(folder)
    finally:
        caller.kill()
        caller.wait()
    assert read_json(folder / PROCESS_FILE)["pid"] is None
    assert not process_alive(folder)
