"""Step 5 of docs/procedure.md against the fake: the pipeline job azure-ai-ml sends, its
progress, metrics."""

from __future__ import annotations

import pytest

from tests.azure.fake_azureml.service import FAILED_PROGRESS
from workspaces.errors import ResourceNotFound
from workspaces.interface import TAG_REQUEST, FinetuneJobSpec
from workspaces.naming import experiment_name_for, finetune_display_name

PARAMETERS = {
    "num_train_epochs": "3",
    "per_device_train_batch_size": "1",
    "per_device_eval_batch_size": "1",
    "learning_rate": "5e-6",
    "lr_scheduler_type": "cosine",
    "apply_lora": "true",
    "apply_deepspeed": "true",
    "deepspeed_stage": "2",
}


@pytest.fixture
def spec(workspace, data_files):
    model = workspace.get_foundation_model("Phi-3-mini-4k-instruct")
    train, test = data_files
    return FinetuneJobSpec(
        name="chatft-1700000000-req1",
        display_name=finetune_display_name(model.name, PARAMETERS, 2, 1),
        experiment_name=experiment_name_for(model.name),
        foundation_model=model,
        compute="gpu-cluster-big",
        train_file=str(train),
        test_file=str(test),
        gpus_per_node=2,
        parameters=PARAMETERS,
        tags={TAG_REQUEST: "req1"},
    )


def test_pipeline_job_body(fake, workspace, spec):
    job = workspace.submit_finetune_job(spec)

    [put] = fake.sent("PUT", r"/jobs/chatft-1700000000-req1$")
    assert put.api_version == "2024-01-01-preview"
    assert "x-azureml-token" in put.headers
    props = put.json["properties"]
    assert props["jobType"] == "Pipeline"
    assert props["displayName"] == (
        "Phi-3-mini-4k-instruct-ultrachat-bs2-cosine-ds2-lora-save_limit-1-seqlen-1"
    )
    assert props["experimentName"] == "chat_completion_Phi-3-mini-4k-instruct"
    assert props["settings"]["force_rerun"] is True
    assert props["settings"]["continue_on_step_failure"] is False
    assert props["outputs"] == {"trained_model": {"jobOutputType": "mlflow_model"}}
    assert props["tags"] == {TAG_REQUEST: "req1", "chatft-component-version": "0.0.57"}
    [node] = props["jobs"].values()
    assert node["componentId"] == (
        "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.57"
    )
    assert node["outputs"]["mlflow_model_folder"]["value"] == "${{parent.outputs.trained_model}}"
    inputs = node["inputs"]
    assert inputs["mlflow_model_path"] == {
        "job_input_type": "mlflow_model",
        "uri": "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/7",
    }
    for step in ("model_import", "preprocess", "finetune", "model_evaluation"):
        assert inputs[f"compute_{step}"]["value"] == "gpu-cluster-big"
    for name in ("train_file_path", "test_file_path"):
        assert inputs[name]["job_input_type"] == "uri_file"
        assert inputs[name]["uri"].startswith("azureml://datastores/workspaceblobstore/paths/")
    literals = {k: v["value"] for k, v in inputs.items() if v["job_input_type"] == "literal"}
    assert literals["number_of_gpu_to_use_finetuning"] == "2"
    assert literals["num_nodes_finetune"] == "1"
    assert {k: literals[k] for k in PARAMETERS} == PARAMETERS
    assert job.component_version == "0.0.57" and job.status == "NotStarted"


def test_local_files_are_uploaded_to_the_default_datastore(fake, workspace, spec):
    workspace.submit_finetune_job(spec)

    assert fake.sent("GET", r"/datastores/workspaceblobstore$")[0].api_version == (
        "2024-10-01-preview"
    )
    [secrets, _] = fake.sent("POST", r"/datastores/workspaceblobstore/listSecrets$")
    assert secrets.json == {"expirableSecret": True, "expireAfterHours": 1}
    uploaded = {k.rsplit("/", 1)[-1]: v for k, v in fake.blobs.items()}
    assert uploaded["train_sft.jsonl"] == open(spec.train_file, "rb").read()
    assert uploaded["test_sft.jsonl"] == open(spec.test_file, "rb").read()


def test_pinned_component_version(fake, workspace, spec):
    fake.add_component("chat_completion_pipeline", "0.0.70")
    job = workspace.submit_finetune_job(spec.model_copy(update={"component_version": "0.0.57"}))

    [get] = fake.sent("GET", r"/components/chat_completion_pipeline/versions/0\.0\.57$")
    assert get.api_version == "2021-10-01-dataplanepreview"
    assert job.component_version == "0.0.57"


def test_resubmission_finds_the_existing_job(fake, workspace, spec):
    workspace.submit_finetune_job(spec)
    again = workspace.submit_finetune_job(spec)

    assert again.name == spec.name
    assert len(fake.sent("PUT", r"/jobs/")) == 1


def test_job_progress_studio_url_and_current_step(fake, workspace, spec):
    workspace.submit_finetune_job(spec)

    statuses = []
    while not (job := workspace.get_job(spec.name)).is_terminal:
        statuses.append((job.status, job.current_step))
    assert statuses[0] == ("Running", "finetune")
    assert job.status == "Completed" and job.current_step is None
    assert job.studio_url.startswith("https://ml.azure.com/runs/chatft-1700000000-req1")
    [children, *_] = fake.sent("GET", r"/history/v1\.0/.*/runs/chatft-1700000000-req1/children$")
    assert children.api_version == "v1.0"
    assert workspace.get_job("no-such-job") is None


def _failed_job(fake, workspace, spec, message: str, nested: tuple[str, ...] = ()):  # noqa: ANN001, ANN202
    """Submit ``spec`` as a job whose finetune step (or its last nested step) fails."""
    fake.job_progress[spec.name] = FAILED_PROGRESS
    if nested:
        fake.nested_steps[spec.name] = nested
    fake.job_errors[spec.name] = {"code": "UserError", "message": message}
    workspace.submit_finetune_job(spec)
    while not (job := workspace.get_job(spec.name)).is_terminal:
        pass
    return job


def test_failed_job_reports_the_failed_steps_error_from_run_history(fake, workspace, spec):
    job = _failed_job(fake, workspace, spec, "train_file_path is empty")
    assert job.status == "Failed"
    assert job.error == "step finetune: UserError: train_file_path is empty"
    assert fake.sent("GET", rf"/runs/{spec.name}_finetune/details$")[0].api_version == "v1.0"


def test_a_failed_step_inside_a_step_is_named_with_its_own_error(fake, workspace, spec):
    """The registry's pipeline nests pipelines (chat_completion holds
    chat_completion_finetune); only direct children were read, so a failure read "step
    chat_completion: Pipeline has failed child jobs", not the step and error that failed."""
    job = _failed_job(fake, workspace, spec, "CUDA out of memory",
                      nested=("chat_completion_preprocess", "chat_completion_finetune"))
    assert job.status == "Failed"
    assert job.error == "step finetune/chat_completion_finetune: UserError: CUDA out of memory"


def test_find_jobs_by_request_tag(fake, workspace, spec):
    workspace.submit_finetune_job(spec)
    workspace.submit_finetune_job(
        spec.model_copy(update={"name": "other", "tags": {TAG_REQUEST: "x"}})
    )

    assert [j.name for j in workspace.find_jobs("req1")] == [spec.name]
    assert fake.sent("GET", r"/jobs$")[0].api_version == "2024-01-01-preview"


def test_cancel_job(fake, workspace, spec):
    workspace.submit_finetune_job(spec)
    workspace.cancel_job(spec.name)
    assert fake.sent("POST", r"/jobs/chatft-1700000000-req1/cancel$")


def test_job_metrics_from_mlflow_child_runs(fake, workspace, spec, credential):
    workspace.submit_finetune_job(spec)
    metrics = workspace.get_job_metrics(spec.name)

    assert metrics.finetune == {"train_loss": 1.1, "eval_loss": 1.3}
    assert metrics.evaluation == {"perplexity": 3.7, "bleu_score": 0.21}
    assert {"step": 2, "metric": "train_loss", "value": 1.4} in metrics.finetune_history
    [search, *_] = fake.sent("POST", r"/mlflow/v1\.0/.*/api/2\.0/mlflow/runs/search$")
    assert search.json["filter"] == f"tags.mlflow.parentRunId = '{spec.name}'"
    assert search.headers["authorization"].startswith("Bearer ")
    with pytest.raises(ResourceNotFound):
        workspace.get_job_metrics("no-such-job")


def test_job_metrics_refused(fake, workspace, spec):
    from tests.azure.fake_azureml import Fault
    from workspaces.errors import AuthenticationFailed

    workspace.submit_finetune_job(spec)
    fake.server.inject(
        Fault(
            "GET",
            r"/mlflow/.*/experiments/get-by-name$",
            403,
            {"error_code": "PERMISSION_DENIED", "message": "no"},
        )
    )
    with pytest.raises(AuthenticationFailed, match="PERMISSION_DENIED"):
        workspace.get_job_metrics(spec.name)


def _completed(workspace, spec) -> None:  # noqa: ANN001
    workspace.submit_finetune_job(spec)
    while not workspace.get_job(spec.name).is_terminal:
        pass


def test_metrics_of_the_registry_pipeline_cost_two_searches_and_the_loss_curves(
    fake, workspace, spec
):
    """The registry's pipeline runs as one node holding seven steps: the finetune step is
    found one level down and the other steps' children are never searched; each search
    brings every metric's latest value, so only the loss curves' histories are read."""
    fake.registry_layout = True
    _completed(workspace, spec)
    fake.requests.clear()

    metrics = workspace.get_job_metrics(spec.name)

    assert metrics.finetune["loss"] == 1.1 and metrics.finetune["eval_loss"] == 1.3
    assert metrics.finetune["train_runtime"] == 301.5 and len(metrics.finetune) == 13
    curves = {(row["metric"], row["step"]): row["value"] for row in metrics.finetune_history}
    assert {metric for metric, _ in curves} == {"loss", "eval_loss", "train_loss"}
    assert [curves["loss", step] for step in range(1, 7)] == [1.85, 1.7, 1.55, 1.4, 1.25, 1.1]
    assert len(fake.sent("POST", r"/mlflow/runs/search$")) == 2
    assert len(fake.sent("GET", r"/mlflow/metrics/get-history$")) == 3
    # the job's experiment came with the job this workspace submitted and waited on
    assert fake.sent("GET", r"/jobs/") == []


def test_metrics_are_read_whole_when_mlflow_answers_in_pages(fake, workspace, spec):
    """An MLflow server may answer a search or a history in pages (next_page_token):
    every page is read, so the step found on a later page and every point count."""
    fake.registry_layout = True
    fake.mlflow_max_page = 1
    _completed(workspace, spec)
    fake.requests.clear()

    metrics = workspace.get_job_metrics(spec.name)

    assert metrics.finetune["train_loss"] == 1.52
    assert [row["step"] for row in metrics.finetune_history if row["metric"] == "loss"] == [
        1, 2, 3, 4, 5, 6]
    searches = fake.sent("POST", r"/mlflow/runs/search$")
    assert len(searches) == 1 + 7  # the node, then its seven steps one page each
    assert all(s.json.get("page_token") for s in searches[2:])
