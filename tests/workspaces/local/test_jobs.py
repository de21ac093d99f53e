"""Local fine-tune jobs: real training in a detached process, statuses, metrics, output."""

import itertools
import os
import re
import signal
import time

import pytest

from workspaces.errors import InvalidRequest
from workspaces.interface import FinetuneJobSpec
from workspaces.local.catalog import get_foundation_model
from workspaces.local.state import read_json
from workspaces.ultrachat import prepare_dataset


def spec_for(workspace, name: str, **params: str) -> FinetuneJobSpec:
    data = prepare_dataset("sample", 2, workspace.root / "data")
    workspace.create_compute("local-cpu", "Local_CPU", "Dedicated", 1)
    parameters = {"num_train_epochs": "1", "learning_rate": "1e-3", "apply_lora": "true",
                  "apply_deepspeed": "true", "max_seq_length": "128", **params}
    return FinetuneJobSpec(
        name=name, display_name=name, experiment_name="chat_completion_test",
        foundation_model=get_foundation_model("phi3-tiny-standin"), compute="local-cpu",
        train_file=data.files["train_sft"], test_file=data.files["test_sft"], gpus_per_node=1,
        parameters=parameters, tags={"chatft-request": "req-1"},
    )


def wait(workspace, name, until, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = workspace.get_job(name)
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {name} stuck at {workspace.get_job(name)}")


@pytest.mark.slow
def test_job_trains_logs_metrics_and_leaves_an_mlflow_model(workspace):
    spec = spec_for(workspace, "job-ok")
    submitted = workspace.submit_finetune_job(spec)
    assert submitted.status in ("Queued", "Running")
    # submitting again attaches to the same job
    assert workspace.submit_finetune_job(spec).name == "job-ok"
    job = wait(workspace, "job-ok", lambda j: j.is_terminal)
    assert job.status == "Completed", job.error
    assert workspace.find_jobs("req-1")[0].name == "job-ok"
    metrics = workspace.get_job_metrics("job-ok")
    assert metrics.finetune["train_loss"] > 0
    assert metrics.finetune["train_tokens_per_second"] > 0
    assert metrics.evaluation["perplexity"] >= 1
    assert any(row["metric"] == "loss" for row in metrics.finetune_history)
    output = workspace.root / "jobs" / "job-ok" / "outputs" / "trained_model"
    assert (output / "MLmodel").exists()
    log = (workspace.root / "jobs" / "job-ok" / "job.log").read_text()
    assert "apply_deepspeed=true is not applicable on a CPU" in log


def test_bad_parameter_is_refused_before_a_job_exists(workspace):
    spec = spec_for(workspace, "job-bad", learning_rate="fast")
    with pytest.raises(InvalidRequest, match="learning_rate='fast' is not a number"):
        workspace.submit_finetune_job(spec)
    assert workspace.get_job("job-bad") is None


@pytest.mark.slow
def test_cancel_and_killed_jobs_end_with_a_status(workspace):
    long = {"num_train_epochs": "50"}
    workspace.submit_finetune_job(spec_for(workspace, "job-cancel", **long))
    wait(workspace, "job-cancel", lambda j: j.current_step == "finetune")
    workspace.cancel_job("job-cancel")
    assert wait(workspace, "job-cancel", lambda j: j.is_terminal).status == "Canceled"

    workspace.submit_finetune_job(spec_for(workspace, "job-killed", **long))
    wait(workspace, "job-killed", lambda j: j.current_step == "finetune")
    pid = read_json(workspace.root / "jobs" / "job-killed" / "process.json")["pid"]
    os.killpg(pid, signal.SIGKILL)
    job = wait(workspace, "job-killed", lambda j: j.is_terminal)
    assert job.status == "Failed"
    assert "ended without reporting" in job.error


@pytest.mark.slow
def test_wait_deadline_cancels_the_job_when_asked(prefect_server, workspace):
    from prefect import flow

    from tasks.finetune import wait_for_job
    from workspaces.errors import DeadlineExceeded

    workspace.submit_finetune_job(spec_for(workspace, "job-deadline", num_train_epochs="50"))

    @flow
    def waits() -> None:
        wait_for_job(workspace, "job-deadline", timeout_minutes=0.05, cancel_on_timeout=True)

    with pytest.raises(DeadlineExceeded, match="asked to cancel"):
        waits()
    assert wait(workspace, "job-deadline", lambda j: j.is_terminal).status == "Canceled"


def test_a_job_that_says_nothing_new_leaves_no_silent_gap_in_the_log(prefect_server, workspace):
    """A default run once left its log silent for minutes (345 s in the baseline
    evaluation, 151 s dequantizing, on a loaded machine). Here a real job is frozen
    (SIGSTOP) for 45 s, as a loaded machine would hold it up: the wait says at least every
    30 s that the job goes on and what it was doing."""
    import threading

    from prefect import flow

    from tasks.finetune import wait_for_job
    from tests.helpers import run_logs

    spec = spec_for(workspace, "job-quiet")
    data = prepare_dataset("sample", 2, workspace.root / "data")
    spec = spec.model_copy(update={"test_gen_file": data.files["test_gen"]})
    workspace.submit_finetune_job(spec)
    wait(workspace, "job-quiet", lambda j: j.status == "Running")
    pid = read_json(workspace.jobs.job_dir("job-quiet") / "status.json")["pid"]
    os.kill(pid, signal.SIGSTOP)
    thaw = threading.Timer(45, os.kill, (pid, signal.SIGCONT))
    thaw.start()

    @flow
    def waits():
        wait_for_job(workspace, "job-quiet", timeout_minutes=10)

    try:
        state = waits(return_state=True)
    finally:
        thaw.cancel()
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert state.is_completed(), state.message
    logs = run_logs(state.state_details.flow_run_id)
    times = [log.timestamp for log in logs]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    text = "\n".join(log.message for log in logs)
    assert max(gaps) <= 31, f"{max(gaps):.0f} s without a line:\n{text}"
    # the frozen phase is said to go on, with what it was doing when it went quiet
    assert re.search(r"Job job-quiet: still Running \(\w+\), \d+ s in this step; \w", text), text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
