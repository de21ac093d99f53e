"""The run's artifacts as the UI shows them: final job status, links that open."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tasks import reports
from workspaces.interface import ComputeTarget, FinetuneJob

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_finetune_job_artifact_ends_with_the_final_status_and_no_file_link(tmp_path) -> None:
    job_dir = tmp_path / "jobs" / "job one"  # a space: the path must read back as text
    compute = ComputeTarget(name="local", size="Local_CPU", provisioning_state="Succeeded")

    @flow
    def submit_then_finish() -> str:
        queued = FinetuneJob(name="job-1", status="Queued", studio_url=job_dir.as_uri())
        artifact = reports.report_finetune_submission(queued, {"lr": "1"}, compute, 0, False)
        done = queued.model_copy(update={"status": "Completed"})
        reports.report_finetune_outcome(artifact, done, {"lr": "1"}, compute, 0, False)
        from prefect.runtime import flow_run
        return flow_run.get_id()

    run_id = submit_then_finish()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    # one artifact, rewritten in place; no link artifact for a local folder
    assert [a.key for a in artifacts] == ["finetune-job"]
    markdown = artifacts[0].data
    assert "| status | Completed |" in markdown and "Queued" not in markdown
    assert "file://" not in markdown and f"`{job_dir}`" in markdown


def test_only_web_links_are_links() -> None:
    assert reports.is_web_link("https://ml.azure.com/runs/x")
    assert not reports.is_web_link("file:///tmp/x")
    assert reports.link_or_path("file:///tmp/a%20b") == "`/tmp/a b`"
    assert reports.link_or_path("https://ml.azure.com/x") == "https://ml.azure.com/x"
