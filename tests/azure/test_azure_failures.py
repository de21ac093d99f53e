"""Failures carry the service's words: a failed operation's code and message reach the user
once, with one sentence of advice for a known class, and a re-run replaces what failed."""

from __future__ import annotations

import time

import pytest

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from tests.azure.fake_azureml.service import FAILED_PROGRESS
from workspaces.errors import JobFailed, QuotaExceeded
from workspaces.interface import MANAGED_BY_VALUE, TAG_MANAGED_BY, DeploymentSpec, EndpointSpec

EP = "ultrachat-completion-1700000000"
MANAGED = {TAG_MANAGED_BY: MANAGED_BY_VALUE}
OUT_OF_QUOTA = (
    "Not enough cluster CPU quota. The amount of additional CPU quota requested is 8, "
    "and you are currently using 14. Your amount of maximum quota is 20."
)


def _settled(read):
    for _ in range(100):
        value = read()
        if value.provisioning_state in ("Succeeded", "Failed", "Canceled"):
            return value
        time.sleep(0.1)
    raise AssertionError("never settled")


@pytest.mark.parametrize(
    ("code", "message", "advice"),
    [
        ("OutOfQuota", OUT_OF_QUOTA, "Request more quota for this VM family"),
        ("OutOfCapacity", "No capacity for Standard_NC6s_v3 in eastus.", "no free machines"),
        ("ImageBuildFailure", "Image build failed: conda env.", "serving image did not build"),
        ("ResourceNotReady", "User container has crashed or terminated: liveness probe "
         "failed.", "failed its liveness probe"),
    ],
)
def test_a_failed_deployment_keeps_the_operations_code_and_message(
    fake, workspace, code, message, advice
):
    model = workspace.register_model("m", "1", "chatft-job", "d", {})
    workspace.begin_create_endpoint(EndpointSpec(name=EP, description="", tags={}))
    fake.fail_next_operation("demo", code, message)
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name=EP, name="demo", model_id=model.id, instance_type="Standard_NC6s_v3",
        instance_count=1, tags={},
    ))

    from tasks.endpoints import provisioning_failure

    dep = _settled(lambda: workspace.get_deployment(EP, "demo"))
    assert dep.provisioning_state == "Failed"
    assert dep.error == f"{code}: {message}"
    text = str(provisioning_failure("deployment demo", "Failed", dep.error))
    assert text.count(message) == 1 and advice in text


def test_a_failed_deployment_seen_in_a_later_session_says_its_own_error(
    fake, workspace, credential
):
    """The teardown once said "deployment Failed: no error reported" for a deployment that
    failed in an earlier session (the failed operation is not this session's to read); the
    deployment's own log is readable then, and says why."""
    from tests.azure.conftest import make_workspace

    model = workspace.register_model("m", "1", "chatft-job", "d", {})
    workspace.begin_create_endpoint(EndpointSpec(name=EP, description="", tags=MANAGED))
    fake.fail_next_operation("demo", "ResourceNotReady", "User container has crashed.")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name=EP, name="demo", model_id=model.id, instance_type="Standard_NC6s_v3",
        instance_count=1, tags={},
    ))
    _settled(lambda: workspace.get_deployment(EP, "demo"))
    fake.deployment_logs = ("Booting worker with pid: 42\nLoading model\n"
                            "OSError: config.json not found in /var/azureml-app/model")

    later = make_workspace(fake, credential)  # another session: none of the first's state
    [endpoint] = [e for e in later.list_endpoints() if e.name == EP]
    [dep] = endpoint.deployments
    assert dep.provisioning_state == "Failed"
    assert dep.error == ("last log lines: Loading model / OSError: config.json not found in "
                         "/var/azureml-app/model")
    assert later.get_deployment(EP, "demo").error == dep.error
    # one log read per read of the Failed deployment, none while the listing stands
    fake.server.requests.clear()
    assert later.get_endpoint(EP).deployments[0].error == dep.error
    assert fake.sent("POST", r"/getLogs$") == []
    assert make_workspace(fake, credential).get_endpoint(EP) is not None
    assert len(fake.sent("POST", r"/getLogs$")) == 1


def test_a_failed_endpoint_operation_keeps_its_error(fake, workspace):
    fake.fail_next_operation(EP, "BadArgument", "Endpoint name is taken in this region.")
    workspace.begin_create_endpoint(EndpointSpec(name=EP, description="", tags={}))
    endpoint = _settled(lambda: workspace.get_endpoint(EP))
    assert endpoint.error == "BadArgument: Endpoint name is taken in this region."


def test_out_of_quota_deployment_then_a_rerun_replaces_it(fake, azure_flow, tmp_path):
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    fake.fail_next_operation("demo", "OutOfQuota", OUT_OF_QUOTA)
    with pytest.raises(QuotaExceeded) as info:
        finetune_and_deploy(request=request)
    text = str(info.value)
    print(f"\nUser sees: {text}")
    assert text.startswith("deployment demo on ultrachat-completion-")
    assert f"ended Failed: OutOfQuota: {OUT_OF_QUOTA}" in text
    assert "Request more quota for this VM family" in text

    # The quota was freed: the re-run replaces the failed deployment and completes.
    result = finetune_and_deploy(request=request)
    assert result.reply
    [endpoint] = fake.deployments
    assert fake.deployments[endpoint]["demo"]["properties"]["provisioningState"] == "Succeeded"
    assert len([r for r in fake.sent("PUT", r"/deployments/demo$") if r.json]) == 2


def test_a_failed_job_says_the_services_words_once(fake, azure_flow, tmp_path, monkeypatch):
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    monkeypatch.setattr(fake, "job_progress", _AllJobs(FAILED_PROGRESS))
    monkeypatch.setattr(fake, "job_errors", _AllJobs({
        "code": "UserError",
        "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    }))
    with pytest.raises(JobFailed) as info:
        finetune_and_deploy(request=request)
    text = str(info.value)
    print(f"\nUser sees: {text}")
    [job] = fake.jobs
    assert text.count(job) == 2  # the name, and inside the studio link
    assert text.count("Failed") == 1
    assert text.count("https://ml.azure.com/runs/") == 1
    assert ("step finetune: UserError: torch.OutOfMemoryError: CUDA out of memory. "
            "Tried to allocate 2.00 GiB") in text
    assert "Pipeline has failed child jobs" not in text  # the cause, not the summary


class _AllJobs(dict):
    """A fake setting that applies to every job name."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def get(self, key, default=None):
        return self.value
