"""finetune_and_deploy, unchanged, on Azure ML: the real SDK against the HTTPS fake.

Includes crashes at two points (model registration, deployment) and the re-runs that
carry on from where the crash left off without submitting, registering or creating twice.
"""

from __future__ import annotations

import time

import pytest

import flows.finetune_and_deploy as flow_module
from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from tests.azure.conftest import make_workspace
from tests.azure.fake_azureml.server import Fault
from tests.azure.fake_azureml.service import REGIONAL_LOW_PRIORITY, quota_row
from tests.helpers import run_artifacts, run_logs
from workspaces.interface import TAG_MANAGED_BY


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def test_whole_azure_path_with_crash_and_resume(fake, azure_flow, tmp_path):
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))

    # crash 1: the registry refuses the model version once
    fake.server.inject(Fault("PUT", r"/models/[^/]+/versions/", 400,
                             _error("BadArgument", "simulated crash at registration")))
    with pytest.raises(Exception, match="simulated crash at registration"):
        finetune_and_deploy(request=request)
    assert len(fake.sent("PUT", r"/jobs/[^/]+$")) == 1
    assert fake.models == {}

    # crash 2: the deployment PUT is refused once
    fake.server.inject(Fault("PUT", r"/deployments/demo$", 400,
                             _error("BadArgument", "simulated crash at deployment")))
    with pytest.raises(Exception, match="simulated crash at deployment"):
        finetune_and_deploy(request=request)

    result = finetune_and_deploy(request=request)
    assert result.job_reused
    assert result.model_name == "Phi-3-mini-4k-instruct-ultrachat-200k"
    assert result.endpoint_name == f"ultrachat-completion-{result.suffix}"
    assert result.reply

    # exactly one job, one model version, one endpoint for the request
    assert len(fake.sent("PUT", r"/jobs/[^/]+$")) == 1
    assert [v for versions in fake.models.values() for v in versions] == [result.suffix]
    assert list(fake.endpoints) == [result.endpoint_name]
    endpoint = fake.endpoints[result.endpoint_name]
    assert endpoint["tags"][TAG_MANAGED_BY] == "chat-finetune-flows"
    assert endpoint["properties"]["traffic"] == {"demo": 100}

    # the deployment carries the walkthrough's settings
    deployment_puts = [r for r in fake.sent("PUT", r"/deployments/demo$") if r.json]
    body = deployment_puts[-1].json
    assert body["properties"]["instanceType"] == "Standard_NC6s_v3"
    assert body["sku"]["capacity"] == 1
    assert body["properties"]["livenessProbe"]["initialDelay"] == "PT10M"
    assert body["properties"]["requestSettings"]["requestTimeout"] == "PT1M30S"

    # one more run: everything found, nothing new sent
    creating = r"/jobs/|/models/|/onlineEndpoints/|/computes/"
    puts_before = len(fake.sent("PUT", creating))
    again = finetune_and_deploy(request=request)
    assert again.job_reused and again.endpoint_reused
    assert len(fake.sent("PUT", creating)) == puts_before


def test_no_secret_reaches_logs_artifacts_or_results(fake, credential, azure_flow, tmp_path):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    state = finetune_and_deploy(
        request=FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl")),
        return_state=True,
    )
    result = state.result()
    run_id = state.state_details.flow_run_id
    keys = fake.keys[result.endpoint_name]
    secrets = [keys["primaryKey"], keys["secondaryKey"], credential.get_token("x").token]
    # the token's claims segment is shared by every token the fake hands out
    secrets.append(credential.get_token("https://management.azure.com/.default").token)

    artifacts = run_artifacts(run_id)
    seen = [log.message for log in run_logs(run_id)]
    seen += [str(a.data) for a in artifacts] + [str(a.description) for a in artifacts]
    seen.append(result.model_dump_json())
    storage = PREFECT_LOCAL_STORAGE_PATH.value()
    seen += [p.read_bytes().decode("utf-8", "ignore") for p in storage.rglob("*") if p.is_file()]
    blob = "\n".join(seen)
    assert result.endpoint_name in blob  # we did read what the run wrote
    for secret in secrets:
        assert secret not in blob


def test_quota_shortage_fails_preflight_before_anything_is_created(fake, azure_flow, tmp_path):
    from workspaces.errors import QuotaExceeded

    fake.quota[quota_row("standardNCSv3Family")] = (44, 48)
    fake.quota[REGIONAL_LOW_PRIORITY] = (96, 100)
    with pytest.raises(QuotaExceeded, match="Considered: Dedicated: .* LowPriority: ") as info:
        finetune_and_deploy(request=FinetuneRequest(dataset="sample",
                                                    download_dir=str(tmp_path / "dl")))
    print(f"\nUser sees: {info.value}")
    assert fake.sent("PUT", r".") == []


def test_no_dedicated_quota_runs_on_a_low_priority_cluster(fake, azure_flow, tmp_path):
    fake.quota[quota_row("standardNCSv3Family")] = (0, 0)
    result = finetune_and_deploy(
        request=FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    )
    [put] = fake.sent("PUT", r"/computes/gpu-cluster-big$")
    assert put.json["properties"]["properties"]["vmPriority"] == "LowPriority"
    assert fake.jobs[result.job_name].status == "Completed"
    assert result.reply


def test_a_workspace_made_again_under_the_same_name_reuses_no_cached_result(
    fake, credential, prefect_server, monkeypatch, tmp_path
):
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    first = make_workspace(fake, credential)
    monkeypatch.setattr(flow_module, "load_workspace", lambda block: first)
    finetune_and_deploy(request=request)

    # Deleted and created again: same subscription, resource group and name, nothing in it.
    fake.reset()
    again = make_workspace(fake, credential)
    monkeypatch.setattr(flow_module, "load_workspace", lambda block: again)
    result = finetune_and_deploy(request=request)

    # The new job was waited for (the fake refuses to register an unfinished job's output).
    assert fake.jobs[result.job_name].status == "Completed"
    assert not result.job_reused
    [put] = fake.sent("PUT", r"/models/[^/]+/versions/")
    assert put.json["properties"]["modelUri"] == (
        f"azureml://jobs/{result.job_name}/outputs/trained_model"
    )
    assert again.cache_scope == f"{first.address_scope}/{fake.workspace_id}" != first.cache_scope


def test_a_job_lost_and_submitted_again_is_waited_for_not_taken_from_the_cache(
    fake, credential, prefect_server, monkeypatch, tmp_path
):
    """The wait's cache was keyed by the workspace and the job's name: when the workspace
    kept its identity but lost the job, the run submitted it again and took the cached
    "Completed" of the old one, and Azure refused to register the unfinished job (400)."""
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    first = make_workspace(fake, credential)
    monkeypatch.setattr(flow_module, "load_workspace", lambda block: first)
    finetune_and_deploy(request=request)

    # Same workspace (same GUID), but its jobs, models and endpoints are gone.
    workspace_id = fake.workspace_id
    fake.reset()
    fake.workspace_id = workspace_id
    again = make_workspace(fake, credential)
    assert again.cache_scope == first.cache_scope
    monkeypatch.setattr(flow_module, "load_workspace", lambda block: again)
    state = finetune_and_deploy(request=request, return_state=True)
    result = state.result()

    assert not result.job_reused
    assert fake.jobs[result.job_name].status == "Completed"
    # the new job was polled until it ended, and its metrics read, not taken from the cache
    assert len(fake.sent("GET", rf"/jobs/{result.job_name}$")) >= 3
    assert fake.sent("GET", r"/mlflow/")


def test_a_rerun_reads_a_completed_jobs_metrics_from_the_cache(fake, azure_flow, tmp_path):
    """A Completed job's metrics never change; a re-run used to read them again (15 of its
    41 requests)."""
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    first = finetune_and_deploy(request=request)
    assert fake.sent("GET", r"/mlflow/")
    fake.server.requests.clear()
    again = finetune_and_deploy(request=request)
    assert again.job_name == first.job_name and again.tuning_summary == first.tuning_summary
    assert [r.path for r in fake.server.requests if "/mlflow/" in r.path] == []


def test_metrics_that_cannot_be_read_do_not_stop_registration(fake, azure_flow, tmp_path):
    refusal = {"error_code": "PERMISSION_DENIED", "message": "caller lacks mlflow read access"}
    fake.server.inject(Fault("GET", r"/mlflow/.*/experiments/get-by-name$", 403, refusal,
                             times=50))
    state = finetune_and_deploy(
        request=FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl")),
        return_state=True,
    )
    result = state.result()
    assert result.reply and result.model_version == result.suffix
    assert fake.models and fake.deployments[result.endpoint_name]["demo"]

    run_id = state.state_details.flow_run_id
    [artifact] = run_artifacts(run_id, "finetune-metrics")
    assert "metrics could not be read" in str(artifact.data)
    assert "PERMISSION_DENIED" in str(artifact.data)
    # the run warns once (the metrics report repeats the reason at INFO); a log batch the
    # client re-sends under load may store a line twice, hence the set
    # (logs reach the server in batches after the run: under load, give them a moment)
    deadline = time.monotonic() + 30
    while not (warnings := {log.message for log in run_logs(run_id)
                            if log.level >= 30 and "could not be read" in log.message}):
        assert time.monotonic() < deadline, "no warning reached the server in 30 s"
        time.sleep(1)
    [warning] = warnings
    assert "PERMISSION_DENIED" in warning

    # a read refused is not cached: the next run asks again, and gets them
    fake.server.faults.clear()
    fake.server.requests.clear()
    again = finetune_and_deploy(
        request=FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl")))
    assert fake.sent("GET", r"/mlflow/") and "could not be read" not in again.tuning_summary


def test_a_bad_dataset_fails_before_any_compute_is_created(fake, azure_flow, tmp_path):
    import shutil
    from pathlib import Path

    from workspaces.errors import InvalidRequest

    sample = Path(flow_module.__file__).parents[1] / "workspaces" / "local" / "sample_data"
    dataset = tmp_path / "my-dataset"
    shutil.copytree(sample, dataset)
    rows = (dataset / "train_sft.jsonl").read_text().splitlines()
    rows[0] = rows[0].replace('"role": "user"', '"role": "robot"', 1)
    (dataset / "train_sft.jsonl").write_text("\n".join(rows) + "\n")

    bad_role = r"train_sft\.jsonl line 1: field 'messages\[0\]\.role'"
    with pytest.raises(InvalidRequest, match=bad_role):
        finetune_and_deploy(request=FinetuneRequest(dataset=str(dataset),
                                                    download_dir=str(tmp_path / "dl")))
    assert fake.sent("PUT", r"/computes/") == []  # nothing billable was created
    assert fake.sent("PUT", r".") == []


def test_the_readme_azure_command_runs_as_written(
    fake, azure_flow, tmp_path, monkeypatch, capsys
):
    import re
    import shlex
    from pathlib import Path

    readme = (Path(flow_module.__file__).parents[1] / "README.md").read_text()
    section = readme.split("## On Azure Machine Learning", 1)[1].split("\n## ", 1)[0]
    [command] = re.findall(r"^\s*(python -m flows\.finetune_and_deploy .+)$", section, re.M)
    argv = shlex.split(command)[3:]
    slugs = []
    monkeypatch.setattr(
        flow_module, "load_workspace", lambda slug: slugs.append(slug) or azure_flow
    )
    monkeypatch.chdir(tmp_path)  # the default download folder is relative

    flow_module.main(argv)
    assert slugs == ["azure-ml-workspace/prod"]
    assert "Reply:       'Sure! Here is a short answer.'" in capsys.readouterr().out


def test_a_size_other_than_the_existing_clusters_is_refused(fake, azure_flow, tmp_path):
    """Defect 6 of #14: compute_size was silently ignored once a cluster existed."""
    from workspaces.errors import InvalidRequest

    fake.add_compute("gpu-cluster-big", "Standard_NC12s_v3")
    request = FinetuneRequest(dataset="sample", compute_size="Standard_NC6s_v3",
                              download_dir=str(tmp_path / "dl"))
    with pytest.raises(InvalidRequest, match="compute_size") as info:
        finetune_and_deploy(request=request)
    print(f"\nUser sees: {info.value}")
    for words in ("Standard_NC6s_v3", "Standard_NC12s_v3", "gpu-cluster-big", "compute_cluster"):
        assert words in str(info.value)
    assert fake.sent("PUT", r".") == []
    assert fake.computes["gpu-cluster-big"]["properties"]["properties"]["vmSize"] == (
        "Standard_NC12s_v3")


def test_a_pathological_model_tag_is_refused_naming_model_and_tag(fake, azure_flow, tmp_path):
    """Defect 6 of #14: a pathological model tag ended in a bare MemoryError."""
    from workspaces.errors import InvalidRequest

    fake.add_registry_model("Phi-3-mini-4k-instruct", "8", tags={
        "finetune_compute_allow_list": "['Standard_NC6s_v3']",
        "model_specific_defaults": "-" * 20000 + "1",
    })
    with pytest.raises(InvalidRequest, match="model_specific_defaults") as info:
        finetune_and_deploy(request=FinetuneRequest(dataset="sample",
                                                    download_dir=str(tmp_path / "dl")))
    print(f"\nUser sees: {info.value}")
    assert "Phi-3-mini-4k-instruct version 8" in str(info.value)
    assert fake.sent("PUT", r".") == []


def test_lineage_tags_come_from_what_the_job_trained_on(fake, azure_flow, tmp_path):
    """#14: the registered model's dataset and sha256 tags are the job's, not the request's.

    The job trains on folder content A; the run crashes at registration; the folder is
    then changed to B and the re-run attaches to the same job. The model must say A.
    """
    import json

    from tests.helpers import prompt_id_for
    from workspaces.ultrachat import SPLITS, prepare_dataset

    def write_folder(answer: str) -> None:
        row = json.dumps({"prompt": "hi", "prompt_id": prompt_id_for("hi"), "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]})
        for split in SPLITS:
            (folder / f"{split}.jsonl").write_text((row + "\n") * 3)

    folder = tmp_path / "mydata"
    folder.mkdir()
    write_folder("content A")
    trained_on = prepare_dataset(str(folder), 100, tmp_path / "reference").sha256
    request = FinetuneRequest(dataset=str(folder), dataset_split_pc=100,
                              download_dir=str(tmp_path / "dl"))
    fake.server.inject(Fault("PUT", r"/models/[^/]+/versions/", 400,
                             _error("BadArgument", "simulated crash at registration")))
    with pytest.raises(Exception, match="simulated crash at registration"):
        finetune_and_deploy(request=request)

    write_folder("content B")
    result = finetune_and_deploy(request=request)
    assert result.job_reused
    tags = fake.models[result.model_name][result.model_version]["properties"]["tags"]
    assert tags["train-sha256"] == trained_on["train_sft"]
    assert tags["test-sha256"] == trained_on["test_sft"]
    assert tags["dataset"] == str(folder)
