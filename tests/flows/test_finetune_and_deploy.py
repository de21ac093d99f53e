"""finetune_and_deploy end to end on the local workspace, under a real Prefect test server."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest, TrainingParameters
from tests.helpers import PROJECT_DIR, run_artifacts, run_logs
from workspaces.scoring import conversation, normalize_answer

QUICK = TrainingParameters(num_train_epochs=1)
# The flows' own behaviour is tested on the 2-layer stand-in (seconds, not minutes); one
# test below runs the real default model end to end.
STANDIN = "phi3-tiny-standin"


@pytest.mark.slow
def test_whole_flow_then_rerun_creates_nothing_new(
    prefect_server, workspace, tmp_path, monkeypatch
):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    request = FinetuneRequest(
        foundation_model=STANDIN,
        training=QUICK, dataset_split_pc=3, download_dir=str(tmp_path / "ultrachat_200k_dataset")
    )
    first_state = finetune_and_deploy(request=request, return_state=True)
    first = first_state.result()
    first_artifacts = run_artifacts(first_state.state_details.flow_run_id)

    assert not first.job_reused and not first.endpoint_reused
    assert first.endpoint_name == f"ultrachat-completion-{first.suffix}"
    assert first.model_name == "phi3-tiny-standin-ultrachat-200k"
    assert first.model_version == first.suffix
    assert isinstance(first.reply, str)
    # The sample body is kept in the request's own folder in the workspace state, not in
    # the user-named download_dir that other requests share (#14).
    sample_file = first.sample_request_file
    assert sample_file.startswith(str(workspace.root)) and first.request_id in sample_file
    assert not (tmp_path / "ultrachat_200k_dataset").exists()
    sample = json.loads(open(sample_file).read())
    assert sample["input_data"]["parameters"] == {
        "temperature": 0.6,
        "top_p": 0.9,
        "do_sample": True,
        "max_new_tokens": 200,
    }
    assert {
        "foundation-model",
        "train-sft-preview",
        "finetune-job",
        "finetune-metrics",
        "registered-model",
        "endpoint",
        "sample-score",
    } <= {a.key for a in first_artifacts}

    # the endpoint is real: key auth over HTTP
    keys = workspace.get_endpoint_keys(first.endpoint_name)
    body = json.dumps(sample)
    no_key = httpx.post(first.scoring_uri, content=body, timeout=60)
    assert no_key.status_code == 401
    with_key = httpx.post(
        first.scoring_uri,
        content=body,
        timeout=60,
        headers={"Authorization": f"Bearer {keys.primary.get_secret_value()}"},
    )
    assert with_key.status_code == 200 and "output" in with_key.json()
    # and the key never reached an artifact
    dumped = json.dumps([a.data for a in first_artifacts], default=str)
    assert keys.primary.get_secret_value() not in dumped

    jobs_before = sorted(p.name for p in (workspace.root / "jobs").iterdir())
    started = time.monotonic()
    second = finetune_and_deploy(request=request)
    rerun_seconds = time.monotonic() - started

    assert second.job_reused and second.endpoint_reused
    assert (second.job_name, second.model_version, second.endpoint_name) == (
        first.job_name,
        first.model_version,
        first.endpoint_name,
    )
    assert sorted(p.name for p in (workspace.root / "jobs").iterdir()) == jobs_before
    assert [e.name for e in workspace.list_endpoints()] == [first.endpoint_name]
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=workspace.tracking_uri).search_model_versions(
        f"name='{first.model_name}'"
    )
    assert len(versions) == 1
    assert rerun_seconds < 60


def test_invalid_parameters_fail_before_anything_is_created():
    with pytest.raises(ValidationError, match="dataset_split_pc"):
        FinetuneRequest(dataset_split_pc=500)
    with pytest.raises(ValidationError, match="endpoint_name"):
        FinetuneRequest(endpoint_name="9-bad")
    with pytest.raises(ValidationError, match="lr_scheduler_type"):
        FinetuneRequest(training={"lr_scheduler_type": "wavy"})


def test_instance_type_outside_allow_list_fails_preflight(prefect_server, workspace, monkeypatch):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    from workspaces.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="instance_type"):
        finetune_and_deploy(request=FinetuneRequest(instance_type="Standard_DS1"))
    assert not (workspace.root / "jobs").exists()
    assert workspace.list_endpoints() == []


RUN_FLOW = """
import sys
from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
finetune_and_deploy(request=FinetuneRequest.model_validate_json(sys.argv[1]))
"""


@pytest.mark.slow
def test_killed_flow_rerun_attaches_to_the_running_job(
    prefect_server, workspace, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    request = FinetuneRequest(
        foundation_model=STANDIN,
        training=TrainingParameters(num_train_epochs=10),
        dataset_split_pc=3,
        download_dir=str(tmp_path / "dl"),
    )
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    log = tmp_path / "flow.log"
    flow_process = subprocess.Popen(
        [sys.executable, "-c", RUN_FLOW, request.model_dump_json()],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    request_id = request.request_id(workspace.cache_scope)
    deadline = time.monotonic() + 240
    while not (jobs := workspace.find_jobs(request_id)) or jobs[0].current_step != "finetune":
        assert time.monotonic() < deadline, "the job never started training"
        assert flow_process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(flow_process.pid, signal.SIGKILL)
    flow_process.wait()
    job_name = jobs[0].name
    assert workspace.get_job(job_name).status == "Running"  # the job outlived its flow

    result = finetune_and_deploy(request=request)
    assert result.job_name == job_name
    assert result.job_reused
    assert [j.name for j in workspace.find_jobs(request_id)] == [job_name]


def readme_run_artifacts() -> set[str]:
    """The artifact keys README.md says every run leaves (less those it marks Azure-only)."""
    text = (PROJECT_DIR / "README.md").read_text()
    promise = text.split("Every run leaves artifacts", 1)[1].split("Events:", 1)[0]
    promise = re.sub(r"`[\w-]+` on Azure", "", promise)
    return set(re.findall(r"`([a-z]+(?:-[a-z]+)*)`", promise))


@pytest.mark.slow
# converts the GGUF, evaluates the base model, tunes, evaluates again and serves: minutes on
# an idle 2-core runner, more than pyproject's 900 s when the machine is shared.
@pytest.mark.timeout(2700)
def test_smollm2_is_converted_tuned_evaluated_and_answers(prefect_server, tmp_path, monkeypatch):
    """The default model end to end: convert, LoRA-tune, evaluate base vs tuned, serve."""
    from mlflow import MlflowClient

    from workspaces.file_digest import sha256_of
    from workspaces.local import LocalWorkspace

    workspace = LocalWorkspace(tmp_path / "workspace")
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    request = FinetuneRequest(
        training=TrainingParameters(num_train_epochs=2),
        download_dir=str(tmp_path / "ultrachat_200k_dataset"),
    )
    try:
        state = finetune_and_deploy(request=request, return_state=True)
        result = state.result()
        assert result.model_name == "SmolLM2-135M-Instruct-ultrachat-200k"
        assert result.reply.strip()  # generated by the served model, never canned

        # converted once into a safetensors folder whose build record names the pinned GGUF
        build = json.loads(
            (workspace.root / "catalog" / "SmolLM2-135M-Instruct" / "1" / "BUILD.json")
            .read_text()
        )
        assert build["gguf_sha256"].startswith("b179c952")

        # tuning helped, measured the same way before and after
        metrics = workspace.get_job_metrics(result.job_name).evaluation
        assert metrics["eval_loss"] < metrics["base_eval_loss"]
        assert metrics["exact_answer_rate"] > metrics["base_exact_answer_rate"]
        assert result.tuning_summary.startswith("Tuning changed test_sft loss from")

        # lineage tags come from the files the job trained on
        job_inputs = workspace.jobs.job_dir(result.job_name) / "inputs"
        version = MlflowClient(tracking_uri=workspace.tracking_uri).search_model_versions(
            f"name='{result.model_name}'"
        )[0]
        assert version.tags["train-sha256"] == sha256_of(job_inputs / "train_sft.jsonl")
        assert version.tags["test-sha256"] == sha256_of(job_inputs / "test_sft.jsonl")
        assert version.tags["base-weights-sha256"] == build["sha256"]

        # progress reached the run's logs while the job trained; artifacts show both models
        run_id = state.state_details.flow_run_id
        records = run_logs(run_id)
        logs = "\n".join(log.message for log in records)
        # no phase is silent for long: the largest gap between two lines of the run
        gap, after = max(((b.timestamp - a.timestamp).total_seconds(), a.message)
                         for a, b in itertools.pairwise(records))
        print(f"\nlargest silent gap of the default run: {gap:.1f} s, after {after!r}")
        assert gap <= 30, (gap, after)
        assert "converted in" in logs
        assert re.search(r"step \d+/\d+, epoch [\d.]+, loss [\d.]+", logs)
        artifacts = {a.key: a for a in run_artifacts(run_id) if a.key}
        assert "| test_sft loss |" in artifacts["finetune-metrics"].data
        # The sample question shows what tuning changed: the job's base and tuned replies to
        # it differ (it was once a question the base model already answered).
        body = json.loads(Path(result.sample_request_file).read_text())
        evaluated = next(s for s in workspace.get_job_metrics(result.job_name).samples
                         if s["messages"] == conversation(body))
        assert normalize_answer(evaluated["base_reply"]) != normalize_answer(
            evaluated["tuned_reply"])
        score = artifacts["sample-score"].data
        assert "Base model:\n> " + evaluated["base_reply"].splitlines()[0] in score
        assert "Tuned model:\n> " + evaluated["tuned_reply"].splitlines()[0] in score
        # The registered-model artifact explains MLflow's own number beside the version.
        registered = artifacts["registered-model"].data
        assert (f"| version | {result.model_version} (this request's version; the MLflow "
                f"registry numbers it {version.version}") in registered
        # Every artifact the README promises for every run, the run has.
        assert readme_run_artifacts() <= set(artifacts), readme_run_artifacts() - set(artifacts)
    finally:
        for endpoint in workspace.list_endpoints():
            workspace.begin_delete_endpoint(endpoint.name)
