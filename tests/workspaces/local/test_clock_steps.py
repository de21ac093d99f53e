"""A stepped clock (NTP, a VM host) never makes a live job or server look dead, nor a gone
one look alive.

The kernel's boot time is wall clock minus uptime, so it moves with every clock step, and
so does every start time read as "boot time + ticks". The tests move the source of boot
time, or the start time a record holds, by 10 s and by an hour in both directions.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from psutil import _pslinux

from workspaces.interface import EndpointSpec
from workspaces.local.jobs import LocalJobs
from workspaces.local.state import (
    PROCESS_FILE,
    process_alive,
    read_json,
    recorded_process,
    spawn_detached,
    write_json,
)

IDLE = "tests.workspaces.local.idle_process"
STEPS = [10.0, -10.0, 3600.0, -3600.0]
REAL_BOOT_TIME = _pslinux.boot_time


@pytest.fixture
def step_clock(monkeypatch):
    """Move the boot time psutil reads (what a clock step does) by the given seconds."""

    def step(seconds: float) -> None:
        monkeypatch.setattr(_pslinux, "boot_time", lambda: REAL_BOOT_TIME() + seconds)

    return step


@pytest.fixture
def idle(tmp_path):
    pids = []

    def start(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        pids.append(spawn_detached(IDLE, folder, "log"))
        return folder

    yield start
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _gone(folder: Path) -> None:
    pid = read_json(folder / PROCESS_FILE)["pid"]
    os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=10)


@pytest.mark.parametrize("seconds", STEPS)
def test_a_step_of_boot_time_keeps_the_live_alive_and_the_gone_dead(idle, step_clock, seconds):
    live = idle("live")
    gone = idle("gone")
    _gone(gone)
    step_clock(seconds)
    assert process_alive(live)
    assert not process_alive(gone)


@pytest.mark.parametrize("seconds", STEPS)
def test_a_moved_recorded_start_time_does_not_make_a_live_process_dead(idle, seconds):
    live = idle("live")
    record = read_json(live / PROCESS_FILE)
    write_json(live / PROCESS_FILE, {**record, "create_time": record["create_time"] + seconds})
    assert process_alive(live)


@pytest.mark.parametrize("seconds", STEPS)
def test_a_reused_pid_never_matches_even_when_its_start_time_fits_the_step(
    idle, step_clock, tmp_path, seconds
):
    # Another process now holds the recorded pid, and its start time read through the
    # stepped boot time is exactly the recorded one: only the start ticks tell them apart.
    other = idle("other")
    record = read_json(other / PROCESS_FILE)
    stale = tmp_path / "stale"
    stale.mkdir()
    write_json(stale / PROCESS_FILE, {
        **record,
        "token": "0" * 32,
        "start_ticks": record["start_ticks"] - 7,
        "create_time": record["create_time"] + seconds,
    })
    step_clock(seconds)
    assert recorded_process(stale) is None
    assert not process_alive(stale)


def test_a_record_from_before_start_ticks_is_confirmed_by_its_token(idle, step_clock):
    # Records written by earlier versions hold only the wall-clock start time.
    live = idle("legacy")
    record = read_json(live / PROCESS_FILE)
    legacy = {k: v for k, v in record.items() if k not in ("start_ticks", "boot_id")}
    write_json(live / PROCESS_FILE, legacy)
    step_clock(3600.0)
    assert process_alive(live)
    write_json(live / PROCESS_FILE, {**legacy, "token": "f" * 32})
    assert not process_alive(live)


def _job(root: Path, name: str, status: dict) -> Path:
    job_dir = root / "jobs" / name
    job_dir.mkdir(parents=True)
    write_json(job_dir / "spec.json", {
        "display_name": name, "experiment_name": "e", "tags": {},
        "submitted_at": time.time() - 120,
    })
    write_json(job_dir / "status.json", status)
    return job_dir


@pytest.mark.parametrize("seconds", STEPS)
def test_a_running_job_stays_running_across_a_step(tmp_path, step_clock, seconds):
    jobs = LocalJobs(tmp_path, "sqlite:///unused.db", str(tmp_path / "artifacts"))
    job_dir = _job(tmp_path, "chatft-1-aaaa", {"status": "Running"})
    pid = spawn_detached(IDLE, job_dir, "job.log")
    try:
        step_clock(seconds)
        assert jobs.get("chatft-1-aaaa").status == "Running"
        os.killpg(pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(pid)], timeout=10)
        job = jobs.get("chatft-1-aaaa")
        assert job.status == "Failed"
        assert "ended without reporting a result" in job.error
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_job_declared_failed_while_its_process_works_is_taken_back(tmp_path):
    # What an earlier version wrote after a clock step: Failed, with the process alive.
    jobs = LocalJobs(tmp_path, "sqlite:///unused.db", str(tmp_path / "artifacts"))
    job_dir = _job(tmp_path, "chatft-2-bbbb", {
        "status": "Failed", "progress": 0.4,
        "error": "the job process ended without reporting a result (killed, or the machine "
                 "restarted); see job.log",
    })
    pid = spawn_detached(IDLE, job_dir, "job.log")
    try:
        job = jobs.get("chatft-2-bbbb")
        assert job.status == "Running"
        assert job.error is None
        assert job.progress == 0.4
        assert read_json(job_dir / "status.json")["status"] == "Running"
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_a_job_that_failed_on_its_own_stays_failed_while_it_exits(tmp_path):
    jobs = LocalJobs(tmp_path, "sqlite:///unused.db", str(tmp_path / "artifacts"))
    job_dir = _job(tmp_path, "chatft-3-cccc", {"status": "Failed", "error": "CUDA out of memory"})
    pid = spawn_detached(IDLE, job_dir, "job.log")
    try:
        assert jobs.get("chatft-3-cccc").status == "Failed"
    finally:
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("seconds", [3600.0, -3600.0])
def test_a_serving_endpoint_stays_serving_across_a_step(workspace, step_clock, seconds):
    workspace.begin_create_endpoint(EndpointSpec(name="clock-step", description="d", tags={}))
    deadline = time.monotonic() + 60
    while workspace.get_endpoint("clock-step").provisioning_state != "Succeeded":
        assert time.monotonic() < deadline, "the endpoint never came up"
        time.sleep(0.2)
    step_clock(seconds)
    endpoint = workspace.get_endpoint("clock-step")
    assert endpoint.healthy
    assert endpoint.provisioning_state == "Succeeded"
    server = read_json(workspace.root / "endpoints" / "clock-step" / PROCESS_FILE)["pid"]
    workspace.begin_create_endpoint(EndpointSpec(
        name="clock-step", description="d", tags={},
    ))  # what `restart` does
    assert read_json(workspace.root / "endpoints" / "clock-step" / PROCESS_FILE)["pid"] == server


def test_the_idle_window_counts_a_request_by_its_real_age_after_a_step(tmp_path):
    # A request made a minute ago, logged before the clock was stepped two hours forward:
    # its wall time reads two hours old, its time since boot says one minute.
    from datetime import UTC, datetime, timedelta

    from workspaces.local.endpoints import LocalEndpoints
    from workspaces.local.state import boot_id, since_boot

    endpoints = LocalEndpoints(tmp_path)
    folder = tmp_path / "endpoints" / "stepped"
    write_json(folder / "endpoint.json", {"name": "stepped"})
    now = time.time()
    lines = [
        {"time": now - 7200 - 60, "since_boot": since_boot() - 60, "boot_id": boot_id(),
         "caller": "organic", "status": 200, "deployment": "demo"},
        # Written in another boot: only its wall time is known, and it is old.
        {"time": now - 7200, "since_boot": 5.0, "boot_id": "another-boot",
         "caller": "organic", "status": 200, "deployment": "demo"},
    ]
    (folder / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    end = datetime.now(UTC)
    activity = endpoints.activity("stepped", end - timedelta(hours=1), end)
    assert activity.total_requests == 1
    assert end - activity.last_organic_request_at < timedelta(minutes=2)
