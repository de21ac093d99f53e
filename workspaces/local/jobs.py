"""Detached local fine-tune jobs: submit, find, report, cancel.

Each job is a folder under ``<state>/jobs/<name>`` holding ``spec.json``, ``status.json``,
``job.log`` and ``outputs/``. The job runs in its own process session, so a killed flow
run does not kill it and a re-run attaches to it by name.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workspaces.interface import TAG_REQUEST, TERMINAL_JOB_STATUSES, FinetuneJob, FinetuneJobSpec
from workspaces.local import mlflow_store
from workspaces.local.finetune_job import CANCEL_FILE, training_settings
from workspaces.local.state import (
    PROCESS_FILE,
    locked,
    process_alive,
    read_json,
    seconds_since,
    spawn_detached,
    stamp,
    stop_processes,
    write_json,
)

# The error a job gets when its process is gone without a word. Only the liveness check
# writes it, and a process found alive afterwards takes the job back (see ``get``).
PROCESS_GONE = "the job process ended without reporting a result"

JOB_MODULE = "workspaces.local.finetune_job"


def _declared_gone(status: dict[str, Any]) -> bool:
    """Whether the Failed status was the liveness check's verdict, not the job's own."""
    return status.get("status") == "Failed" and bool(
        status.get("declared_gone") or str(status.get("error") or "").startswith(PROCESS_GONE)
    )


class LocalJobs:
    """The workspace's fine-tune jobs, each a folder and a detached process."""

    def __init__(self, root: Path, tracking_uri: str, artifact_root: str,
                 threads: dict[str, str] | None = None) -> None:
        """Jobs under ``root/jobs``, logging to the MLflow store at ``tracking_uri``;
        ``threads``: the thread budget's environment for the jobs (thread_budget.py)."""
        self.root = root / "jobs"
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.threads = threads or {}

    def job_dir(self, name: str) -> Path:
        """The job's folder."""
        return self.root / name

    def submit(self, spec: FinetuneJobSpec, weights: str) -> FinetuneJob:
        """Write the job (its spec and its own copy of the data) and start its process; a
        job of that name is returned as it is (started if its submitter died first)."""
        training_settings(spec.parameters)  # an InvalidParameter is an InvalidRequest
        job_dir = self.job_dir(spec.name)
        with locked(self.root / ".submit.lock"):
            if (job_dir / "spec.json").exists():
                if not (job_dir / PROCESS_FILE).exists():
                    # The submitter died after writing the job and before starting it.
                    self._start(job_dir, weights)
                existing = self.get(spec.name)
                assert existing is not None
                return existing
            inputs = job_dir / "inputs"
            inputs.mkdir(parents=True, exist_ok=True)
            # The job keeps its own copy of the data, as an Azure job keeps its uploads.
            train = inputs / "train_sft.jsonl"
            test = inputs / "test_sft.jsonl"
            train.write_bytes(Path(spec.train_file).read_bytes())
            test.write_bytes(Path(spec.test_file).read_bytes())
            record = spec.model_dump(mode="json")
            if spec.test_gen_file:
                test_gen = inputs / "test_gen.jsonl"
                test_gen.write_bytes(Path(spec.test_gen_file).read_bytes())
                record["test_gen_file"] = str(test_gen)
            now = stamp()
            record.update(
                train_file=str(train),
                test_file=str(test),
                weights=weights,
                tracking_uri=self.tracking_uri,
                artifact_root=self.artifact_root,
                submitted_at=now["at"],
                submitted_since_boot=now["since_boot"],
                boot_id=now["boot_id"],
            )
            write_json(job_dir / "spec.json", record)
            write_json(job_dir / "status.json", {"status": "Queued", "updated_at": time.time()})
            # The job opens the MLflow database first thing; made here, before any job
            # runs, two first jobs never race to create its tables.
            mlflow_store.ensure_tables(self.tracking_uri)
            self._start(job_dir, weights)
        result = self.get(spec.name)
        assert result is not None
        return result

    def _start(self, job_dir: Path, weights: str) -> None:
        # Catalog models made on this machine need no hub; a hub model id does.
        offline = {"HF_HUB_OFFLINE": "1"} if Path(weights).is_dir() else {}
        # The process record is its own file: status.json belongs to the job process.
        spawn_detached(JOB_MODULE, job_dir, "job.log", TOKENIZERS_PARALLELISM="false",
                       **offline, **self.threads)

    def get(self, name: str) -> FinetuneJob | None:
        """The job as its status file and process say (None: no such job)."""
        job_dir = self.job_dir(name)
        spec = read_json(job_dir / "spec.json")
        if spec is None:
            return None
        status = read_json(job_dir / "status.json") or {}
        state = status.get("status", "Unknown")
        # Not started yet (its submitter died before starting it): a re-submit starts it.
        not_started = (
            read_json(job_dir / PROCESS_FILE) is None
            and seconds_since(spec, "submitted_at", "submitted_since_boot") < 30
        )
        # The record names the process by pid and start ticks: a process still starting
        # counts as running (no /proc command line is read, so nothing to race).
        if state not in TERMINAL_JOB_STATUSES and not not_started and not process_alive(job_dir):
            status = self._declare_gone(job_dir)
        elif _declared_gone(status) and process_alive(job_dir):
            # Declared gone on a misread (an older check, fooled by a clock step) while it
            # worked on: it is taken back, not resubmitted beside itself.
            status = self._take_back(job_dir)
        state = status.get("status", "Unknown")
        error = status.get("error")
        return FinetuneJob(
            name=name,
            status=state,
            display_name=spec["display_name"],
            experiment_name=spec["experiment_name"],
            studio_url=job_dir.resolve().as_uri(),
            tags=spec.get("tags", {}),
            component_version="local",
            current_step=status.get("current_step"),
            activity=status.get("activity") if state == "Running" else None,
            progress=status.get("progress"),
            training=status.get("training") or {},
            error=error,
            created_at=datetime.fromtimestamp(spec["submitted_at"], UTC),
        )

    def _declare_gone(self, job_dir: Path) -> dict[str, Any]:
        with locked(job_dir / ".status.lock"):
            # Re-read: the process may have finished between the two reads.
            status = read_json(job_dir / "status.json") or {}
            if status.get("status") not in TERMINAL_JOB_STATUSES:
                status.update(
                    status="Failed",
                    error=f"{PROCESS_GONE} (killed, or the machine restarted); see "
                    f"{job_dir / 'job.log'}",
                    ended_at=time.time(),
                    declared_gone=True,
                )
                write_json(job_dir / "status.json", status)
            return status

    def _take_back(self, job_dir: Path) -> dict[str, Any]:
        with locked(job_dir / ".status.lock"):
            status = read_json(job_dir / "status.json") or {}
            if _declared_gone(status):
                for key in ("error", "ended_at", "declared_gone"):
                    status.pop(key, None)
                status["status"] = "Running"
                write_json(job_dir / "status.json", status)
            return status

    def find(self, request_id: str) -> list[FinetuneJob]:
        """The jobs submitted for ``request_id``, newest first."""
        jobs = []
        if self.root.is_dir():
            for spec_file in self.root.glob("*/spec.json"):
                spec = read_json(spec_file) or {}
                if spec.get("tags", {}).get(TAG_REQUEST) == request_id:
                    job = self.get(spec_file.parent.name)
                    if job:
                        jobs.append(job)
        return sorted(jobs, key=lambda j: j.created_at or datetime.min.replace(tzinfo=UTC),
                      reverse=True)

    def cancel(self, name: str, wait_s: float = 30.0) -> None:
        """Ask the job to stop at its next step; force it after ``wait_s`` seconds."""
        job_dir = self.job_dir(name)
        (job_dir / CANCEL_FILE).touch()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            job = self.get(name)
            if job is None or job.is_terminal:
                return
            time.sleep(0.3)
        stop_processes(job_dir, JOB_MODULE, timeout_s=10)
        with locked(job_dir / ".status.lock"):
            status = self.status_record(name)
            if status.get("status") not in TERMINAL_JOB_STATUSES or status.get("declared_gone"):
                status.update(status="Canceled", error="canceled on request (forced)",
                              ended_at=time.time(), declared_gone=False)
                write_json(job_dir / "status.json", status)

    def status_record(self, name: str) -> dict[str, Any]:
        """The job process's own status file, as written ({} before it wrote one)."""
        return read_json(self.job_dir(name) / "status.json") or {}

    def output_path(self, name: str) -> Path:
        """Where the job writes its trained model (an MLflow model folder)."""
        return self.job_dir(name) / "outputs" / "trained_model"
