"""smoke_test_endpoints: prove every managed online endpoint still answers.

Scheduled (hourly, see prefect.yaml). Finds the endpoints this project manages (tag
``managed-by``) or the ones named, skips those still provisioning or tagged
``chatft-no-smoke-test``, and sends every deployment that takes traffic a few real
test_gen conversations with the step-8 scoring contract. Each reply gets a verdict
(``ok``, ``content_filtered``, ``bad_reply``, ``timeout_408``, ``model_error_424``,
``throttled_429``, ``unauthorized_401``, ``unreachable``, ``client_timeout``,
``http_<code>``) and a latency.

Probes run at most ``max_concurrency`` deployments at a time (one request in flight per
deployment) and never wait on each other, so one slow or dead endpoint does not hold up
the rest; tasks/smoke_test.py says why a thread pool inside one task. The run writes
the table artifact ``smoke-test-results``, emits ``chatft.smoke-test.failed`` per failing
endpoint and one ``chatft.smoke-test.completed``, then ends Failed when anything failed,
so automations and notifications fire. Requests carry the caller marker ``smoke-test``,
so the teardown flow does not count them as use.

Run it:
    python -m flows.smoke_test_endpoints                    # local workspace
    python -m flows.smoke_test_endpoints --workspace-block azure-ml-workspace/prod
or from a Prefect server: entrypoint ``flows/smoke_test_endpoints.py:smoke_test_endpoints``.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from blocks import load_workspace
from flows.parameters import ScoringParameters
from tasks import reports
from tasks.data import ensure_dataset
from tasks.endpoints import sample_request
from tasks.own_traffic import record_own_requests
from tasks.smoke_test import (
    DEFAULT_MAX_CONCURRENCY,
    MAX_CONCURRENCY_LIMIT,
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
    up_to_last_question,
)
from workspaces.interface import Workspace
from workspaces.ultrachat import SAMPLE_SOURCE

# A smoke test proves the model answers; a short reply is enough and keeps it cheap.
SMOKE_SCORING = ScoringParameters(max_new_tokens=32)
SMOKE_DATASET_DIR = "smoke-test-dataset"


class SmokeTestFailed(Exception):
    """At least one endpoint did not answer as the scoring contract says."""


class SmokeTestResult(BaseModel):
    """What the run found, returned to callers (the artifact holds the same)."""

    workspace: str
    endpoints_tested: list[str]
    endpoints_failed: list[str]
    skipped: list[SkippedEndpoint]
    results: list[ProbeResult]


def _dataset_dir(workspace: Workspace, download_dir: str | None) -> str:
    """Kept apart from the fine-tune flow's folder, whose cached files must not change."""
    if download_dir:
        return download_dir
    return str((workspace.local_data_root() or Path(".")) / SMOKE_DATASET_DIR)


def request_bodies(
    workspace: Workspace, dataset: str, split_pc: float, download_dir: str | None,
    scoring: ScoringParameters, count: int, seed: int,
) -> list[dict[str, Any]]:
    """``count`` step-8 bodies from test_gen rows; every deployment gets the same ones."""
    target = _dataset_dir(workspace, download_dir)
    prepared = ensure_dataset(dataset, split_pc, target)
    parameters = scoring.model_dump()
    return [
        up_to_last_question(sample_request(prepared.files["test_gen"], parameters, seed + i))
        for i in range(count)
    ]


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
    workspace_block: str | None = None,
    endpoint_names: list[str] | None = None,
    requests_per_deployment: Annotated[int, Field(ge=1, le=50)] = 1,
    max_concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY_LIMIT)] = (
        DEFAULT_MAX_CONCURRENCY
    ),
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60,
    dataset: str = SAMPLE_SOURCE,
    dataset_split_pc: Annotated[float, Field(gt=0, le=100)] = 5,
    download_dir: str | None = None,
    scoring: ScoringParameters = SMOKE_SCORING,
    seed: int | None = None,
) -> SmokeTestResult:
    """Probe the managed endpoints (or ``endpoint_names``) of the workspace.

    Args:
        workspace_block: a block slug (local-workspace/<name> or
            azure-ml-workspace/<name>); empty = local workspace in ./.workspace.
        endpoint_names: test these endpoints (managed or not); empty = every managed one.
        requests_per_deployment: conversations sent to each deployment with traffic.
        max_concurrency: deployments probed at the same time; each deployment still gets
            one request at a time (see tasks/smoke_test.py for the default).
        request_timeout_s: a request with no answer by then counts as client_timeout.
        dataset: where test_gen rows come from: 'sample' (shipped), a Hugging Face id or
            a folder of <split>.jsonl files.
        dataset_split_pc: percent of the dataset prepared (rows are drawn from it).
        download_dir: where the rows are prepared; empty = the workspace's data folder.
        scoring: generation parameters sent with each request.
        seed: picks the rows; empty = different rows each run.
    """
    logger = get_run_logger()
    workspace = load_workspace(workspace_block)
    plan = find_endpoints_to_test(workspace, endpoint_names)

    results: list[ProbeResult] = []
    if plan.targets:
        seed = random.randrange(2**31) if seed is None else seed
        logger.info("Drawing %d test_gen row(s) with seed %d", requests_per_deployment, seed)
        bodies = request_bodies(workspace, dataset, dataset_split_pc, download_dir, scoring,
                                requests_per_deployment, seed)
        results = probe_all(workspace, plan.targets, bodies, max_concurrency, request_timeout_s)
        # Azure cannot see the caller marker: record what we sent so teardown subtracts it.
        answered = Counter(r.endpoint for r in results if r.http_status is not None)
        for endpoint, count in answered.items():
            record_own_requests(endpoint, workspace.kind, SMOKE_TEST_CALLER, count)
    results += missing_results(plan)

    # Artifacts and events first: a failed run must still say what it saw.
    report_smoke_test(results, plan.skipped, workspace.kind)
    failed = emit_events(workspace, results, plan.skipped)
    tested = sorted({r.endpoint for r in results})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace-block", default=None,
                        help="block slug, e.g. azure-ml-workspace/prod (default: local)")
    parser.add_argument("--endpoint", action="append", dest="endpoints",
                        help="test this endpoint (repeatable); default: every managed one")
    parser.add_argument("--requests-per-deployment", type=int, default=1)
    parser.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY)
    parser.add_argument("--request-timeout-s", type=float, default=60)
    args = parser.parse_args()
    result = smoke_test_endpoints(
        workspace_block=args.workspace_block, endpoint_names=args.endpoints,
        requests_per_deployment=args.requests_per_deployment,
        max_concurrency=args.max_concurrency, request_timeout_s=args.request_timeout_s,
    )
    print(f"All {len(result.endpoints_tested)} endpoint(s) answered; "
          f"{len(result.skipped)} skipped.")


if __name__ == "__main__":
    main()
