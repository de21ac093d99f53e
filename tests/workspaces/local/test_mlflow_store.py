"""First jobs of a fresh workspace open its MLflow database at once, and all of them work."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.workspaces.local.test_jobs import spec_for, wait
from workspaces.local import mlflow_store
from workspaces.local.state import child_env


def test_processes_opening_a_fresh_database_at_once_all_succeed(tmp_path):
    # Four processes, as four first jobs: without the lock, 2 of 4 failed in each of three
    # tries ("table ... already exists", "duplicate column name", a half-done migration).
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start_at = f"{time.time() + 8:.3f}"  # past every interpreter's imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.workspaces.local.first_job_opening", uri,
             (tmp_path / "artifacts").as_uri(), start_at],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(), text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(outputs)
    experiments = {line.split()[1] for out in outputs for line in out.splitlines()
                   if line.startswith("opened ")}
    assert len(experiments) == 1
    runs = mlflow_store.client(uri).search_runs(list(experiments))
    assert len(runs) == 4


@pytest.mark.slow
def test_two_first_jobs_of_a_fresh_workspace_both_complete(workspace):
    # The fixture's workspace comes with its tables made; these jobs make them.
    (workspace.root / "mlflow.db").unlink()
    for name in ("first-a", "first-b"):
        workspace.submit_finetune_job(spec_for(workspace, name))
    for name in ("first-a", "first-b"):
        job = wait(workspace, name, lambda j: j.is_terminal, timeout=400)
        assert job.status == "Completed", job.error
