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


def test_sample_score_says_what_tuning_changed_only_when_it_changed_something() -> None:
    """The artifact said the question showed what tuning changed even when no evaluated
    question had different base and tuned replies (the body then fell back to a random row
    that could be one of them)."""
    from workspaces.interface import ScoreResponse
    from workspaces.scoring import build_body

    messages = [{"role": "user", "content": "What is the first letter of summer?"}]
    body = build_body(messages, {"max_new_tokens": 8})
    response = ScoreResponse(status_code=200, body='{"output": "s"}', latency_ms=5.0)

    @flow
    def scored(base: str, tuned: str) -> str:
        reports.report_score(body, response, "s", {
            "messages": messages, "reference": "s", "base_reply": base, "tuned_reply": tuned})
        from prefect.runtime import flow_run
        return flow_run.get_id()

    def markdown(run_id) -> str:  # noqa: ANN001
        with get_client(sync_client=True) as client:
            [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        return artifact.data

    differing = markdown(scored('"S"', "s"))
    assert "this shows what tuning changed" in differing
    same = markdown(scored("s.", "S"))
    assert "what tuning changed" not in same
    assert "no held-out question did the base and tuned models answer differently" in same
