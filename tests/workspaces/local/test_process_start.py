"""A process we just started is alive to the liveness check, never taken for a dead one."""

from __future__ import annotations

import os
import signal

from workspaces.local.state import process_alive, spawn_detached

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
            pid = spawn_detached(IDLE, folder, "log")
            pids.append(pid)
            if not process_alive(pid, str(folder)):
                misread.append(i)
    finally:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert misread == []


def test_a_process_of_another_folder_is_not_ours(tmp_path):
    (tmp_path / "a").mkdir()
    pid = spawn_detached(IDLE, tmp_path / "a", "log")
    try:
        assert process_alive(pid, str(tmp_path / "a"))
        assert not process_alive(pid, str(tmp_path / "b"))
    finally:
        os.killpg(pid, signal.SIGKILL)
