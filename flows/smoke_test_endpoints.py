"""smoke_test_endpoints: prove every managed online endpoint still answers.

Scheduled (hourly, see prefect.yaml). First it ends the canary releases whose run is over
(final on the Prefect server, or silent past the heartbeat bound): finished or undone,
with a ``rollout-recovery`` artifact that also lists releases under way and held
(tasks/rollout_recovery.py); one it cannot settle fails the run after every other
endpoint was probed. Then it finds the endpoints this project manages (tag
``managed-by``) or the ones named, skips those still provisioning or tagged
``chatft-no-smoke-test``, and sends every deployment that takes traffic a few real
test_gen conversations with the step-8 scoring contract. Each reply gets a verdict
(``ok``, ``content_filtered``, ``bad_reply``, ``timeout_408``, ``model_error_424``,
``throttled_429``, ``unauthorized_401``, ``unreachable``, ``client_timeout``,
``http_<code>``) and a latency.

Probes run at most ``max_concurrency`` deployments at a time, one request in flight per
deployment, and never wait on each other, so one slow or dead endpoint does not hold up
the rest (tasks/endpoint_probes.py says why a thread pool inside one task). The run writes
the table artifact ``smoke-test-results``, emits ``chatft.smoke-test.failed`` per
failing endpoint and one ``chatft.smoke-test.completed``, then ends Failed when anything
failed, so automations and notifications fire. Requests carry the caller marker
``smoke-test``, so the teardown flow does not count them as use.

Run it:
    python -m flows.smoke_test_endpoints                    # local workspace
    python -m flows.smoke_test_endpoints --workspace-block azure-ml-workspace/prod
    python -m flows.smoke_test_endpoints --help             # every field of the request
or from a Prefect server: entrypoint ``flows/smoke_test_endpoints.py:smoke_test_endpoints``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, State
from pydantic import BaseModel

from blocks import load_workspace
from flows.cli import parse_request
from flows.parameters import ScoringParameters, SmokeTestRequest, WorkspaceBlock, form_title
from flows.reported_failure import ReportedFailure
from flows.reported_failure import install as quiet_reported_failures
from flows.startup import skip_final_collection
from tasks import reports
from tasks.data import ensure_dataset
from tasks.endpoint_probes import (
    SMOKE_TEST_CALLER,
    ProbeResult,
    SkippedEndpoint,
    SmokeTarget,
    describe_failure,
    failure_summary,
    find_endpoints_to_test,
    missing_results,
    probe_deployments,
    report_smoke_test,
)
from tasks.endpoints import sample_requests
from tasks.own_traffic import record_own_requests
from tasks.rollout_recovery import settle_abandoned_rollouts
from workspaces.interface import Workspace

SMOKE_DATASET_DIR = "smoke-test-dataset"

quiet_reported_failures()


class SmokeTestFailed(ReportedFailure):
    """At least one endpoint did not answer as the scoring contract says."""


class SmokeTestResult(BaseModel):
    """What the run found, returned to callers (the artifact holds the same)."""

    workspace: str
    endpoints_tested: list[str]
    endpoints_failed: list[str]
    skipped: list[SkippedEndpoint]
    results: list[ProbeResult]


def _dataset_dir(workspace: Workspace, download_dir: str | None) -> str:
    """Kept apart from the fine-tune flow's folder, whose cached files must not change;
    never in the current directory (see Workspace.data_folder)."""
    return str(workspace.data_folder(download_dir or SMOKE_DATASET_DIR))


def request_bodies(
    workspace: Workspace, dataset: str, split_pc: float, download_dir: str | None,
    scoring: ScoringParameters, count: int, seed: int,
) -> list[dict[str, Any]]:
    """``count`` step-8 bodies from test_gen rows; every deployment gets the same ones."""
    target = _dataset_dir(workspace, download_dir)
    prepared = ensure_dataset(dataset, split_pc, target, workspace.cache_scope)
    parameters = scoring.model_dump()
    return sample_requests(
        prepared.files["test_gen"], parameters, [seed + i for i in range(count)]
    )


def probe_all(
    workspace: Workspace, targets: list[SmokeTarget], bodies: list[dict[str, Any]],
    max_concurrency: int, timeout_s: float,
) -> list[ProbeResult]:
    """Probe every deployment, at most ``max_concurrency`` at once (one task run)."""
    state = probe_deployments(workspace, targets, bodies, timeout_s, max_concurrency,
                              return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, list):
        return outcome
    # The probes never raise; if the task itself broke, every target still gets a row.
    reason = f"the probe itself failed: {type(outcome).__name__}: {outcome}"[:300]
    return [ProbeResult(**t.model_dump(), status="probe_error", reason=reason) for t in targets]


def emit_events(
    workspace: Workspace, results: list[ProbeResult], skipped: list[SkippedEndpoint]
) -> dict[str, list[ProbeResult]]:
    """One failure event per failing endpoint and one summary event; returns the failures."""
    run_id = str(flow_run.get_id() or "")
    failed = failure_summary(results)
    for endpoint, failures in sorted(failed.items()):
        first = failures[0]
        reports.emit(
            "smoke-test.failed", endpoint, workspace.kind,
            {"flow_run_id": run_id,
             "failures": [f.model_dump(exclude={"endpoint"}) for f in failures]},
            labels={"chatft.model": first.model, "chatft.model-version": first.version,
                    "chatft.smoke-test.status": first.status},
        )
    tested = sorted({r.endpoint for r in results})
    reports.emit(
        "smoke-test.completed", workspace.cache_scope, workspace.kind,
        {"flow_run_id": run_id, "endpoints_tested": tested,
         "endpoints_failed": sorted(failed), "skipped": [s.model_dump() for s in skipped],
         "requests": len(results), "requests_ok": sum(r.ok for r in results)},
        resource_kind="workspace",
        labels={"chatft.smoke-test.outcome": "failed" if failed else "passed"},
    )
    return failed


@flow(
    name="smoke-test-endpoints",
    description="Send real test_gen conversations to every managed endpoint; fail when one "
    "does not answer.",
    log_prints=True,
)
def smoke_test_endpoints(
    request: Annotated[SmokeTestRequest, form_title("What to test")] = SmokeTestRequest(),  # noqa: B008
    workspace_block: WorkspaceBlock = "",
) -> SmokeTestResult:
    """Probe the managed endpoints (or ``request.endpoint_names``) of the workspace.

    Args:
        request: which endpoints to probe and how; empty fields take the defaults.
        workspace_block: where to run, as a Prefect block: local-workspace/NAME or
            azure-ml-workspace/NAME. Leave empty for the embedded local workspace in
            $CHATFT_STATE_DIR (default ./.workspace).

    Returns:
        The endpoints tested and skipped; a failed probe fails the run (after the
        ``smoke-test-results`` artifact is written) and emits ``chatft.smoke-test.failed``.

    Example:
        ``smoke_test_endpoints(request=SmokeTestRequest(endpoint_names=["my-endpoint"]))``
    """
    endpoint_names, seed, scoring = request.endpoint_names, request.seed, request.scoring
    requests_per_deployment = request.requests_per_deployment
    logger = get_run_logger()
    workspace = load_workspace(workspace_block)
    # A release whose run died is finished or undone first, so what is probed is what
    # will serve (tasks/rollout_recovery.py).
    listed, releases = settle_abandoned_rollouts(workspace, request.held_alert_hours)
    unsettled = [r for r in releases if not r.settled]
    plan = find_endpoints_to_test(workspace, endpoint_names, listed)

    results: list[ProbeResult] = []
    if plan.targets:
        seed = random.randrange(2**31) if seed is None else seed
        logger.info("Drawing %d test_gen row(s) with seed %d", requests_per_deployment, seed)
        bodies = request_bodies(workspace, request.dataset, request.dataset_split_pc,
                                request.download_dir, scoring, requests_per_deployment, seed)
        results = probe_all(workspace, plan.targets, bodies, request.max_concurrency,
                            request.request_timeout_s)
        # Azure cannot see the caller marker: record what we sent so teardown subtracts it.
        answered = Counter(r.endpoint for r in results if r.http_status is not None)
        for endpoint, count in answered.items():
            record_own_requests(endpoint, workspace.kind, SMOKE_TEST_CALLER, count)
    results += missing_results(plan)

    # Artifacts and events first: a failed run must still say what it saw.
    report_smoke_test(results, plan.skipped, workspace.kind)
    failed = emit_events(workspace, results, plan.skipped)
    tested = sorted({r.endpoint for r in results})
    if unsettled:
        failed_text = "; ".join(f"{r.endpoint}: {r.action}" for r in unsettled)
        raise SmokeTestFailed(
            f"{len(unsettled)} release(s) could not be settled and wait for a person ("
            f"{failed_text}); {len(tested)} endpoint(s) tested"
            + (f", {len(failed)} failed" if failed else "")
            + ". See the rollout-recovery and smoke-test-results artifacts.")
    if not tested and not failed:
        return nothing_tested(workspace, plan.skipped)
    reports.name_run(
        f"smoke-test: {len(tested)} endpoint(s), "
        + (f"{len(failed)} failed" if failed else "all answered")
        + (f", {len(plan.skipped)} skipped" if plan.skipped else "")
    )
    if failed:
        raise SmokeTestFailed(
            f"{len(failed)} of {len(tested)} endpoint(s) failed the smoke test: "
            + "; ".join(describe_failure(name, f) for name, f in sorted(failed.items()))
            + ". See the smoke-test-results artifact for reasons."
        )
    logger.info("All %d endpoint(s) answered; %d skipped", len(tested), len(plan.skipped))
    return SmokeTestResult(
        workspace=workspace.cache_scope, endpoints_tested=tested, endpoints_failed=[],
        skipped=plan.skipped, results=results,
    )


def nothing_tested(workspace: Workspace, skipped: list[SkippedEndpoint]) -> State:
    """A pass that probed nothing: Completed, named NothingTested, saying why.

    Nothing probed is not a pass: the run's name and state say so, not a green "all
    answered" (the first scheduled run on a fresh server has nothing to test).
    """
    why = (f"{len(skipped)} endpoint(s) skipped: "
           + "; ".join(f"{s.endpoint} ({s.reason})" for s in skipped)
           if skipped else "no managed endpoint in the workspace")
    reports.name_run(f"smoke-test: nothing tested ({len(skipped)} skipped)")
    get_run_logger().info("No endpoint was tested: %s", why)
    return Completed(
        name="NothingTested", message=f"no endpoint was tested: {why}",
        data=SmokeTestResult(workspace=workspace.cache_scope, endpoints_tested=[],
                             endpoints_failed=[], skipped=skipped, results=[]))


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.smoke_test_endpoints``: parse the request from ``argv``, run, print."""
    request, workspace_block = parse_request(
        SmokeTestRequest, "python -m flows.smoke_test_endpoints", argv
    )
    result = smoke_test_endpoints(request=request, workspace_block=workspace_block)
    if not result.endpoints_tested:
        print(f"No endpoint was tested; {len(result.skipped)} skipped.")
        return
    print(f"All {len(result.endpoints_tested)} endpoint(s) answered; "
          f"{len(result.skipped)} skipped.")


if __name__ == "__main__":
    main()
    skip_final_collection()
