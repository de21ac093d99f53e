"""Step 5 of docs/procedure.md, the fine-tune job: the suffix, submit (or attach), wait,
read metrics."""

from __future__ import annotations

import logging
import time
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.transactions import get_transaction

from tasks.policies import WORKSPACE_INPUTS, WorkspaceInputs, transient_retries
from tasks.waiting import poll_until
from workspaces.errors import (
    DeadlineExceeded,
    JobFailed,
    TransientWorkspaceError,
    WorkspaceError,
)
from workspaces.failure_advice import with_advice
from workspaces.interface import (
    TAG_SUFFIX,
    FinetuneJob,
    FinetuneJobSpec,
    JobMetrics,
    Workspace,
)
from workspaces.naming import finetune_job_name, suffix_for

PROGRESS_EVERY_S = 2.0
# The longest the log of a running job stays silent is about SILENCE_S + POLL_CAP_S (the
# issue asked for no gap over 30 s): a job that says nothing new is said to go on.
SILENCE_S = 15.0
POLL_CAP_S = 15.0


@task(name="allocate-suffix", cache_policy=WORKSPACE_INPUTS, **transient_retries())
def allocate_suffix(workspace: Workspace, request_id: str) -> str:
    """The request's suffix: the one its job carries, else the one made from its id.

    Jobs submitted by earlier versions carry an epoch-second suffix in a tag; a request
    that has one keeps it, so its job, model version and endpoint are found again.
    """
    for job in workspace.find_jobs(request_id):
        if job.tags.get(TAG_SUFFIX):
            get_run_logger().info(
                "Request %s already has suffix %s (job %s)",
                request_id,
                job.tags[TAG_SUFFIX],
                job.name,
            )
            return job.tags[TAG_SUFFIX]
    return suffix_for(request_id)


# Not cached by Prefect: the job itself is the record. Its deterministic name and request
# tag make the submit idempotent, even after a crash between submit and result.
@task(name="submit-finetune-job", cache_policy=NO_CACHE, **transient_retries())
def submit_finetune_job(
    workspace: Workspace,
    spec: FinetuneJobSpec,
    request_id: str,
    resubmit_failed: bool,
) -> FinetuneJob:
    """Submit the job, or attach to the one this request already submitted."""
    logger = get_run_logger()
    previous = workspace.find_jobs(request_id)
    if previous:
        latest = previous[0]
        if latest.status not in ("Failed", "Canceled", "NotResponding"):
            logger.info(
                "Reusing fine-tune job %s (%s); nothing submitted", latest.name, latest.status
            )
            return latest
        if not resubmit_failed:
            # The listing carries no error text; the job itself does.
            latest = workspace.get_job(latest.name) or latest
            raise JobFailed(
                f"{job_failure(latest)} Fix the cause and run again with "
                "resubmit_failed_job=true to submit a new job."
            )
        attempt = len(previous) + 1
        suffix = spec.tags.get(TAG_SUFFIX, "")
        spec = spec.model_copy(update={"name": finetune_job_name(request_id, suffix, attempt)})
        logger.warning(
            "Job %s ended %s; submitting attempt %d as %s",
            latest.name,
            latest.status,
            attempt,
            spec.name,
        )
    existing = workspace.get_job(spec.name)
    if existing is not None:
        logger.info("Reusing fine-tune job %s (%s)", existing.name, existing.status)
        return existing
    # Submitting prepares the job's inputs (locally: builds the base model's weights the
    # first time), which can take minutes: say so before it starts.
    logger.info("Submitting fine-tune job %s on compute %s (preparing its inputs can take "
                "a few minutes)", spec.name, spec.compute)
    job = workspace.submit_finetune_job(spec)
    logger.info(
        "Submitted fine-tune job %s (%s) to experiment %s",
        job.name,
        job.display_name,
        spec.experiment_name,
    )
    return job


def job_created(job: FinetuneJob) -> str:
    """The job's creation time as text: with its name, what tells this job from an older
    one of the same name (a cache key must never confuse them); "" when unknown."""
    return job.created_at.isoformat() if job.created_at else ""


@task(
    name="wait-for-job",
    cache_policy=WorkspaceInputs(exclude=["timeout_minutes", "cancel_on_timeout"],
                                 required=["job_created"]),
    **transient_retries(),
)
def wait_for_job(
    workspace: Workspace, job_name: str, timeout_minutes: float, cancel_on_timeout: bool = False,
    job_created: str = "",
) -> FinetuneJob:
    """Poll the job with back-off until it ends; log status and step changes, show progress.

    Only a Completed job returns, and it is cached on the workspace's identity, the job's
    name and ``job_created`` (its creation time, see :func:`job_created`): a completed job
    never changes, and a job submitted again under the same name is another job. Past the
    deadline the task fails; the job goes on unless ``cancel_on_timeout`` is set.
    """
    progress_id = create_progress_artifact(
        progress=0.0, key="finetune-progress", description=f"Fine-tune job {job_name}"
    )
    narrator = JobNarrator(job_name, get_run_logger(), progress_id)

    def read() -> FinetuneJob:
        job = workspace.get_job(job_name)
        if job is None:
            raise JobFailed(f"fine-tune job {job_name} disappeared from the workspace")
        return job

    try:
        job = poll_until(
            read,
            lambda j: j.is_terminal,
            timeout_minutes * 60,
            f"fine-tune job {job_name}",
            on_change=narrator.report,
            # Training logs arrive every few seconds; a shorter cap keeps them visible live,
            # and the log never silent for more than SILENCE_S + the cap.
            max_delay_s=min(POLL_CAP_S, workspace.max_poll_interval_s),
        )
    except DeadlineExceeded as exc:
        if cancel_on_timeout:
            workspace.cancel_job(job_name)
            raise DeadlineExceeded(f"{exc}; the job was asked to cancel") from exc
        raise DeadlineExceeded(
            f"{exc}; it keeps running: run again to attach to it, raise "
            "job_timeout_minutes, or set cancel_job_on_timeout=true"
        ) from exc
    if job.status != "Completed":
        raise JobFailed(job_failure(job))
    update_progress_artifact(progress_id, progress=100.0)
    return job


class JobNarrator:
    """What :func:`wait_for_job` says about a running job: status and step changes, its
    training lines, its step's activity, and its progress bar."""

    def __init__(
        self, job_name: str, logger: logging.Logger | logging.LoggerAdapter, progress_id: UUID
    ) -> None:
        """Narrate ``job_name`` to ``logger`` and the progress artifact ``progress_id``."""
        self.job_name = job_name
        self.logger = logger
        self.progress_id = progress_id
        self.seen: dict[str, object] = {}
        self.said_at = self.step_at = time.monotonic()

    def say(self, message: str, *args: object) -> None:
        """Log a line about the job; the silence is measured from here."""
        self.logger.info(message, *args)
        self.said_at = time.monotonic()

    def report(self, job: FinetuneJob) -> None:
        """Say what changed since the last poll; move the bar."""
        job_name, seen = self.job_name, self.seen
        now = time.monotonic()
        if (job.status, job.current_step) != (seen.get("status"), seen.get("step")):
            self.say("Job %s: %s%s", job_name, job.status,
                     f" (step {job.current_step})" if job.current_step else "")
            seen.update(status=job.status, step=job.current_step)
            self.step_at = now
        line = training_line(job.training)
        if line and line != seen.get("training"):
            self.say("Job %s: %s", job_name, line)
            seen["training"] = line
        # What the step does now (loading the weights, question 17-32 of 50): a new activity
        # is said at once; with nothing new for SILENCE_S, the step is said to go on, so no
        # phase of a long job leaves the log silent.
        if job.activity and job.activity != seen.get("activity"):
            self.say("Job %s: %s: %s", job_name, job.current_step or job.status, job.activity)
            seen["activity"] = job.activity
        elif not job.is_terminal and now - self.said_at >= SILENCE_S:
            self.say("Job %s: still %s%s, %s in this step%s", job_name, job.status,
                     f" ({job.current_step})" if job.current_step else "",
                     _duration(now - self.step_at),
                     f"; {job.activity}" if job.activity else "")
        # The bar moves at most every PROGRESS_EVERY_S: polls come several times a second
        # locally, and each update is a write on the Prefect server, beside the training.
        if (
            job.progress is not None
            and (job.progress, line) != (seen.get("progress"), seen.get("reported"))
            and time.monotonic() - float(seen.get("progress_at", -PROGRESS_EVERY_S))
            >= PROGRESS_EVERY_S
        ):
            update_progress_artifact(
                self.progress_id,
                progress=round(job.progress * 100, 1),
                description=f"Fine-tune job {job_name}" + (f": {line}" if line else ""),
            )
            seen.update(progress=job.progress, reported=line, progress_at=time.monotonic())


def _duration(seconds: float) -> str:
    """'45 s' or '3 min 5 s'."""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def training_line(training: dict[str, float]) -> str:
    """'step 12/39, epoch 0.92, loss 1.2345' from a job's latest training log, or ''."""
    if not training or "step" not in training:
        return ""
    parts = [f"step {int(training['step'])}/{int(training.get('max_steps', 0)) or '?'}"]
    if "epoch" in training:
        parts.append(f"epoch {training['epoch']:.2f}")
    if "loss" in training:
        parts.append(f"loss {training['loss']:.4f}")
    return ", ".join(parts)


def job_failure(job: FinetuneJob) -> str:
    """What a user reads about a job that did not complete: name and status once, the
    service's error text, one sentence of advice when the failure class is known, the link."""
    cause = job.error or "the service gave no error text"
    message = with_advice(f"fine-tune job {job.name} ended {job.status}: {cause}", cause)
    message = message if message.endswith(".") else f"{message}."
    return f"{message} Logs: {job.studio_url}." if job.studio_url else message


# A Completed job's metrics never change: read once, cached on the job's identity (read
# again, they were 15 of a re-run's 41 Azure requests).
@task(
    name="get-job-metrics",
    cache_policy=WorkspaceInputs(required=["job_created"]),
    **transient_retries(),
)
def get_job_metrics(workspace: Workspace, job_name: str, job_created: str = "") -> JobMetrics:
    """Training and evaluation metrics of the job's finetune and evaluation child runs.

    A Completed job whose metrics cannot be read still goes on to registration: the
    result says why they are missing, and the run logs a warning. Such a result is not
    cached, so a read refused today (permission, missing run) is tried on the next run.
    Transient faults retry.
    """
    try:
        return workspace.get_job_metrics(job_name)
    except TransientWorkspaceError:
        raise
    except WorkspaceError as exc:
        get_run_logger().warning(
            "Metrics of job %s could not be read; registering and deploying anyway: %s",
            job_name, exc,
        )
        transaction = get_transaction()
        if transaction is not None:
            transaction.write_on_commit = False  # the cache keeps only metrics that were read
        return JobMetrics(unavailable=str(exc))
