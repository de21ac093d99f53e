"""The cores shared out by what computes: a process's share follows the busy others."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from workspaces.local import thread_budget
from workspaces.local.thread_budget import ThreadBudget, fixed_threads


def _other_process(board, role: str) -> subprocess.Popen:  # noqa: ANN001
    """A live process of the workspace that marks itself busy, as a server generating."""
    code = ("import sys, time; from pathlib import Path; "
            "from workspaces.local.thread_budget import ThreadBudget; "
            "b = ThreadBudget(Path(sys.argv[1]), sys.argv[2]); "
            "[(b.busy(), time.sleep(0.2)) for _ in range(600)]")
    return subprocess.Popen([sys.executable, "-c", code, str(board), role])


def _wait_for(condition, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.1)


def test_a_process_alone_takes_every_core_and_shares_them_with_busy_others(tmp_path):
    board = tmp_path / "threads"
    me = ThreadBudget(board, "job", cores=4)
    assert me.threads() == 4
    server = _other_process(board, "endpoint")
    try:
        _wait_for(lambda: me.others_busy() == 1)
        assert me.threads() == 2
        scorer = _other_process(board, "scorer")
        try:
            _wait_for(lambda: me.others_busy() == 2)
            assert me.threads() == 1  # 4 cores, 3 busy: at least one each
        finally:
            scorer.kill()
            scorer.wait()
        # a killed process's mark is not counted, fresh as it is
        assert me.others_busy() == 1
    finally:
        server.kill()
        server.wait()
    assert me.threads() == 4


def test_a_mark_left_idle_frees_its_cores(tmp_path, monkeypatch):
    board = tmp_path / "threads"
    other = ThreadBudget(board, "endpoint")
    other.busy()
    me = ThreadBudget(board, "job", cores=2)
    # the other is this same live process under another name: only its age counts here
    other.mark.rename(board / f"endpoint.{os.getppid()}")
    assert me.threads() == 1
    stale = time.time() - thread_budget.BUSY_FOR_S - 1
    os.utime(board / f"endpoint.{os.getppid()}", (stale, stale))
    assert me.threads() == 2


def test_a_clock_set_back_does_not_keep_an_idle_mark_busy(tmp_path):
    """Marks touched before the clock went back an hour lie in the future: an idle one
    frees its cores at once; one still computing is touched again on the new clock."""
    board = tmp_path / "threads"
    other = ThreadBudget(board, "endpoint")
    other.busy()
    mark = other.mark.rename(board / f"endpoint.{os.getppid()}")
    me = ThreadBudget(board, "job", cores=2)
    ahead = time.time() + 3600
    os.utime(mark, (ahead, ahead))
    assert me.threads() == 2
    os.utime(mark, None)  # touched again after the jump
    assert me.threads() == 1


def test_apply_sets_torch_threads_and_release_gives_them_back(tmp_path):
    import torch

    before = torch.get_num_threads()
    board = tmp_path / "threads"
    try:
        me = ThreadBudget(board, "job", cores=2)
        assert me.apply() == 2 and torch.get_num_threads() == 2
        assert me.mark.exists()
        with ThreadBudget(board, "scorer").marked_busy():
            # the scorer is this process under another name; count it by its mark
            (board / f"scorer.{os.getpid()}").rename(board / f"scorer.{os.getppid()}")
            assert me.apply() == 1 and torch.get_num_threads() == 1
            (board / f"scorer.{os.getppid()}").rename(board / f"scorer.{os.getpid()}")
        assert not (board / f"scorer.{os.getpid()}").exists()
        me.release()
        assert not me.mark.exists()
    finally:
        torch.set_num_threads(before)


def test_a_fixed_count_wins_and_a_bad_one_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(thread_budget.FIXED_ENV, "3")
    monkeypatch.setenv(thread_budget.BOARD_ENV, str(tmp_path / "threads"))
    assert ThreadBudget.from_env("job").threads() == 3
    assert fixed_threads(None) is None and fixed_threads(" ") is None
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ValueError, match=f"CHATFT_THREADS={bad!r}: give a whole number"):
            fixed_threads(bad)


def test_the_workspace_gives_its_processes_the_board_and_the_fixed_count(
        tmp_path, monkeypatch):
    from blocks.local_workspace import LocalWorkspaceBlock
    from workspaces.local import LocalWorkspace

    monkeypatch.delenv(thread_budget.BOARD_ENV, raising=False)
    shared = LocalWorkspace(tmp_path / "a")
    assert shared.threads == {thread_budget.BOARD_ENV: str(shared.root / "threads")}
    assert shared.jobs.threads == shared.endpoints.threads == shared.threads
    # A machine's board, named in the environment, is every workspace's on it.
    monkeypatch.setenv(thread_budget.BOARD_ENV, str(tmp_path / "machine"))
    one, other = LocalWorkspace(tmp_path / "one"), LocalWorkspace(tmp_path / "other")
    assert one.threads == other.threads == {thread_budget.BOARD_ENV: str(tmp_path / "machine")}
    fixed = LocalWorkspaceBlock(state_dir=str(tmp_path / "b"),
                                threads_per_process=1).get_workspace()
    assert fixed.threads[thread_budget.FIXED_ENV] == "1"
    with pytest.raises(ValueError, match="threads_per_process"):
        LocalWorkspaceBlock(state_dir=str(tmp_path), threads_per_process=0)


def test_a_bad_count_in_the_environment_stops_the_workspace_before_any_process(
        tmp_path, monkeypatch):
    from workspaces.local import LocalWorkspace

    monkeypatch.setenv(thread_budget.FIXED_ENV, "all")
    with pytest.raises(ValueError, match="CHATFT_THREADS='all'"):
        LocalWorkspace(tmp_path / "ws")
    monkeypatch.setenv(thread_budget.FIXED_ENV, "2")
    assert LocalWorkspace(tmp_path / "ws").threads[thread_budget.FIXED_ENV] == "2"


@pytest.mark.slow
def test_a_real_job_gives_way_to_a_busy_neighbour_and_takes_the_cores_back(
        workspace, monkeypatch):
    """The job reads the board before each step: beside a process computing it takes half
    the cores, alone again all of them, and its log says so; its mark goes when it ends."""
    from tests.workspaces.local.test_jobs import spec_for, wait
    from workspaces.local import LocalWorkspace

    if thread_budget.available_cores() < 2:
        pytest.skip("sharing needs 2 cores or more")
    cores = thread_budget.available_cores()
    # The workspace's own board: the test run's (conftest) also holds other modules' marks.
    monkeypatch.delenv(thread_budget.BOARD_ENV, raising=False)
    workspace = LocalWorkspace(workspace.root)
    board = workspace.root / "threads"
    neighbour = thread_budget.ThreadBudget(board, "endpoint")  # this test process, computing
    with neighbour.marked_busy():
        workspace.submit_finetune_job(spec_for(workspace, "job-shares"))
        log = workspace.root / "jobs" / "job-shares" / "job.log"
        wait(workspace, "job-shares", lambda j: "computing on" in _read(log) or j.is_terminal)
    job = wait(workspace, "job-shares", lambda j: j.is_terminal)
    assert job.status == "Completed", job.error
    shares = re.findall(r"computing on (\d+) threads? of (\d+) cores", _read(log))
    assert (str(cores // 2), str(cores)) in shares  # beside the busy neighbour
    assert shares[-1] == (str(cores), str(cores))  # alone again
    assert [p.name for p in board.iterdir() if p.name.startswith("job.")] == []


def _read(path) -> str:  # noqa: ANN001
    return path.read_text() if path.exists() else ""
