"""Probes of online endpoints: which to test, one probe per deployment, the verdicts.

The smoke test (flows/smoke_test_endpoints.py) probes every managed deployment; a
release's contract check (tasks/rollout.py) probes its new deployment with the same code.

A probe sends real test_gen rows with the step-8 scoring contract and names what came
back (``ok``, ``content_filtered``, ``throttled_429``, ``unreachable``, ...). Probes never
raise: a dead or slow endpoint is a finding to report, not a reason to stop testing the
others. Keys never leave the workspace; replies are cut to a short excerpt.

How the probes fan out (why a bounded thread pool inside one task):

- Not one Prefect task per deployment. Each task run costs tens of milliseconds of
  client CPU (state transitions, events, logs to the API); measured with a server, 100
  task runs took about 4 s of overhead on two cores, so 1,000 endpoints would spend most
  of the run orchestrating. The results table artifact already shows every probe.
- Not async HTTP. ``Workspace.invoke`` is synchronous on both workspaces (httpx locally,
  ``requests`` with the endpoint key on Azure); an async path would be a second scoring
  client per workspace to keep in step. The probes only wait on the network, so threads
  cost little: a pool of ``max_concurrency`` threads bounds memory and sockets whatever
  the fleet size, and each request keeps its own ``request_timeout_s``. What does cost
  is CPU held under the GIL per request: the local workspace scores through one shared
  HTTP client (a client per request loaded the CA bundle each time, which made 100
  endpoints take twice as long, seen with py-spy).
- The default, ``DEFAULT_MAX_CONCURRENCY`` deployments at once, is safe for Azure's
  scoring front end because the requests are spread over endpoints, never stacked on
  one: a deployment answers 429 once more than ``2 x max_concurrent_requests_per_instance
  x instance_count`` requests are pending (1 per instance by default), so each deployment
  gets its requests one after the other, never two at once. The fleet-wide bound keeps
  the client's threads and sockets, and the burst seen by the regional front end, small.
  It stays the flow's ``max_concurrency`` parameter (up to ``MAX_CONCURRENCY_LIMIT``).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.policies import transient_retries
from workspaces.interface import (
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_NO_SMOKE_TEST,
    Deployment,
    Endpoint,
    ScoreResponse,
    Workspace,
)
from workspaces.scoring import CONTENT_FILTERED, BadReply, read_reply

# Deployments probed at once by default; see the module docstring.
DEFAULT_MAX_CONCURRENCY = 64
MAX_CONCURRENCY_LIMIT = 256
# The caller marker of smoke-test requests: the teardown flow subtracts this traffic.
SMOKE_TEST_CALLER = "smoke-test"
OK = "ok"
SKIPPED = "skipped"
RESULTS_ARTIFACT_KEY = "smoke-test-results"
EXCERPT_CHARS = 160

# Why a status matters, in words the person on call can act on.
REASONS = {
    "content_filtered": "answered 200 with an empty object: the reply was content-filtered",
    "timeout_408": "the deployment gave up before the model answered (408); raise "
    "request_timeout_ms or use a faster instance",
    "model_error_424": "the model container failed (424); read the deployment logs",
    "throttled_429": "the deployment refused the request as too busy (429); add instances "
    "or raise max_concurrent_requests_per_instance",
    "unauthorized_401": "the endpoint refused the workspace's key (401); the key was "
    "regenerated or the endpoint's auth changed",
    "not_found": "the endpoint does not exist",
}


class SmokeTarget(BaseModel):
    """One deployment to probe, with what the result table shows about it."""

    endpoint: str
    deployment: str
    model: str = ""
    version: str = ""


class SkippedEndpoint(BaseModel):
    """An endpoint not tested this run, and why."""

    endpoint: str
    reason: str


class ProbeResult(BaseModel):
    """The verdict on one scoring request."""

    endpoint: str
    deployment: str
    model: str = ""
    version: str = ""
    status: str
    http_status: int | None = None
    latency_ms: float | None = None
    reply_excerpt: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the endpoint passed every check."""
        return self.status == OK


class SmokeTestPlan(BaseModel):
    """What discovery found: deployments to probe, endpoints skipped or missing."""

    targets: list[SmokeTarget] = Field(default_factory=list)
    skipped: list[SkippedEndpoint] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)


# -- discovery -------------------------------------------------------------------------
def _skip_reason(endpoint: Endpoint) -> str | None:
    if endpoint.tags.get(TAG_NO_SMOKE_TEST, "").lower() not in ("", "false", "0", "no"):
        return f"tagged {TAG_NO_SMOKE_TEST}={endpoint.tags[TAG_NO_SMOKE_TEST]}"
    if endpoint.provisioning_state != "Succeeded":
        return f"still provisioning ({endpoint.provisioning_state})"
    if not any(share > 0 for share in endpoint.traffic.values()):
        return "no deployment takes traffic"
    return None


def _target(endpoint: Endpoint, deployment_name: str) -> SmokeTarget:
    """Model and version come from the deployment's tags, else the endpoint's."""
    deployment: Deployment | None = next(
        (d for d in endpoint.deployments if d.name == deployment_name), None
    )
    tags = endpoint.tags_of(deployment_name)
    return SmokeTarget(
        endpoint=endpoint.name,
        deployment=deployment_name,
        model=tags.get(TAG_MODEL) or (deployment.model_id if deployment else ""),
        version=tags.get(TAG_MODEL_VERSION, ""),
    )


def plan_from_endpoints(endpoints: list[Endpoint], missing: list[str]) -> SmokeTestPlan:
    """Every deployment with traffic > 0 of every testable endpoint."""
    plan = SmokeTestPlan(missing=missing)
    for endpoint in sorted(endpoints, key=lambda e: e.name):
        reason = _skip_reason(endpoint)
        if reason:
            plan.skipped.append(SkippedEndpoint(endpoint=endpoint.name, reason=reason))
            continue
        for name, share in sorted(endpoint.traffic.items()):
            if share > 0:
                plan.targets.append(_target(endpoint, name))
    return plan


@task(name="find-endpoints-to-test", cache_policy=NO_CACHE, **transient_retries())
def find_endpoints_to_test(
    workspace: Workspace, endpoint_names: list[str] | None, listed: list[Endpoint] | None = None
) -> SmokeTestPlan:
    """The managed endpoints (or the named ones) and the deployments to probe on each.

    ``listed`` is the workspace's listing when the run already has it; a named endpoint
    that is not among its managed ones is read on its own (the listing may leave out the
    deployments of endpoints that are not ours).
    """
    known = {e.name: e for e in listed if e.managed} if listed is not None else {}
    if endpoint_names:
        # Named explicitly: tested even when not tagged managed-by; a missing one is a failure.
        found = {name: known.get(name) or workspace.get_endpoint(name)
                 for name in dict.fromkeys(endpoint_names)}
        endpoints = [e for e in found.values() if e is not None]
        missing = [name for name, e in found.items() if e is None]
    else:
        everything = listed if listed is not None else workspace.list_endpoints()
        endpoints = [e for e in everything if e.managed]
        missing = []
    plan = plan_from_endpoints(endpoints, missing)
    get_run_logger().info(
        "%d deployment(s) on %d endpoint(s) to probe; %d skipped, %d missing",
        len(plan.targets), len({t.endpoint for t in plan.targets}), len(plan.skipped),
        len(plan.missing),
    )
    for skipped in plan.skipped:
        get_run_logger().info("Skipping %s: %s", skipped.endpoint, skipped.reason)
    return plan


# -- verdicts --------------------------------------------------------------------------
def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _error_message(body: str) -> str:
    """The message of an error body ({"error": {"message": ...}}), else the body."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return _excerpt(body)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _excerpt(error["message"])
    return _excerpt(body)


def classify_reply(response: ScoreResponse) -> tuple[str, str]:
    """Name an HTTP answer: (status, reason); reason is empty when it is ok."""
    code = response.status_code
    if code != 200:
        status = {408: "timeout_408", 424: "model_error_424", 429: "throttled_429",
                  401: "unauthorized_401"}.get(code, f"http_{code}")
        detail = _error_message(response.body)
        return status, f"{REASONS.get(status, f'answered HTTP {code}')}: {detail}".rstrip(": ")
    try:
        read_reply(response.body)
    except BadReply as exc:
        if exc.kind == CONTENT_FILTERED:
            return exc.kind, REASONS[CONTENT_FILTERED]
        return exc.kind, str(exc)
    return OK, ""


def _exception_names(exc: BaseException) -> set[str]:
    """Class names along the exception's chain (workspaces wrap transport errors)."""
    names: set[str] = set()
    seen: BaseException | None = exc
    while seen is not None and len(names) < 100:
        names.update(cls.__name__ for cls in type(seen).__mro__)
        seen = seen.__cause__ or seen.__context__
    return names


def classify_exception(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """Name a request that got no HTTP answer: (status, reason)."""
    names = _exception_names(exc)
    # Matched by class name so this works for httpx (local) and requests (Azure) alike,
    # without importing either transport here.
    if any("Connect" in n for n in names):  # refused, reset, or ConnectTimeout
        return "unreachable", f"no connection to the endpoint ({type(exc).__name__})"
    if any("Timeout" in n for n in names):
        return "client_timeout", f"no answer within request_timeout_s={timeout_s:g}"
    if any(n in names for n in ("TransportError", "RequestException", "OSError")):
        return "unreachable", f"the connection failed ({type(exc).__name__})"
    return "probe_error", f"{type(exc).__name__}: {_excerpt(str(exc))}"


def probe_once(
    workspace: Workspace, target: SmokeTarget, body: dict[str, Any], timeout_s: float
) -> ProbeResult:
    """Send one body to ``target`` by its deployment header and give the verdict."""
    started = time.perf_counter()
    fields = target.model_dump()
    try:
        response = workspace.invoke(
            target.endpoint, body, deployment_name=target.deployment,
            caller=SMOKE_TEST_CALLER, timeout_s=timeout_s,
        )
    except Exception as exc:  # noqa: BLE001 - every failure to get an answer is a verdict
        status, reason = classify_exception(exc, timeout_s)
        return ProbeResult(**fields, status=status, reason=reason,
                           latency_ms=round((time.perf_counter() - started) * 1000, 1))
    status, reason = classify_reply(response)
    excerpt = read_reply(response.body) if status == OK else response.body
    return ProbeResult(
        **fields, status=status, http_status=response.status_code, reason=reason,
        latency_ms=round(response.latency_ms, 1), reply_excerpt=_excerpt(excerpt),
    )


def probe_target(
    workspace: Workspace, target: SmokeTarget, bodies: list[dict[str, Any]], timeout_s: float
) -> list[ProbeResult]:
    """Send each body to one deployment in turn: never two requests in flight at once."""
    return [probe_once(workspace, target, body, timeout_s) for body in bodies]


# A measurement, so never cached; and never retried: a flaky answer is what we report.
# One task for the whole fan-out (see the module docstring for why not one per deployment).
@task(
    name="probe-deployments",
    task_run_name="probe-{max_concurrency}-at-a-time",
    cache_policy=NO_CACHE,
)
def probe_deployments(
    workspace: Workspace,
    targets: list[SmokeTarget],
    bodies: list[dict[str, Any]],
    timeout_s: float,
    max_concurrency: int,
) -> list[ProbeResult]:
    """Probe every target, at most ``max_concurrency`` deployments at once.

    Example::

        results = probe_deployments(workspace, plan.targets, bodies, timeout_s=60,
                                    max_concurrency=DEFAULT_MAX_CONCURRENCY)
    """
    logger = get_run_logger()
    started = time.perf_counter()
    workers = max(1, min(max_concurrency, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smoke-probe") as pool:
        # map keeps the plan's order; each worker holds one deployment's requests at a time.
        per_target = list(pool.map(
            lambda target: probe_target(workspace, target, bodies, timeout_s), targets
        ))
    results = [result for batch in per_target for result in batch]
    # Logged here, not in the worker threads (the run logger lives in this thread), and
    # only failures one by one: a thousand "ok" lines would drown the ones that matter.
    for result in results:
        if not result.ok:
            logger.warning("%s/%s: %s in %s ms: %s", result.endpoint, result.deployment,
                           result.status, result.latency_ms, result.reason)
    logger.info("%d request(s) to %d deployment(s), %d at a time: %d ok, %d failed, in %.1f s",
                len(results), len(targets), workers, sum(r.ok for r in results),
                sum(not r.ok for r in results), time.perf_counter() - started)
    return results


def missing_results(plan: SmokeTestPlan) -> list[ProbeResult]:
    """Endpoints named explicitly that do not exist count as failed."""
    return [ProbeResult(endpoint=name, deployment="-", status="not_found",
                        reason=REASONS["not_found"]) for name in plan.missing]


# -- report ----------------------------------------------------------------------------
def result_rows(results: list[ProbeResult], skipped: list[SkippedEndpoint]) -> list[dict[str, Any]]:
    """Table rows: failures first (what a reader looks for), then ok, then skipped."""
    ordered = sorted(results, key=lambda r: (r.ok, r.endpoint, r.deployment))
    # The reason right after the status: the UI does not wrap cells, so columns far to the
    # right of a 1440 px page are cut off; model and version matter least, so they go last.
    rows = [
        {"endpoint": r.endpoint, "deployment": r.deployment, "status": r.status,
         "reason": r.reason, "latency_ms": "" if r.latency_ms is None else r.latency_ms,
         "reply": r.reply_excerpt, "model": r.model, "version": r.version}
        for r in ordered
    ]
    rows += [
        {"endpoint": s.endpoint, "deployment": "-", "status": SKIPPED, "reason": s.reason,
         "latency_ms": "", "reply": "", "model": "", "version": ""}
        for s in skipped
    ]
    return rows


def report_smoke_test(
    results: list[ProbeResult], skipped: list[SkippedEndpoint], workspace_kind: str
) -> None:
    """The result table, under a stable key so the UI shows its history run by run."""
    failed = sorted({r.endpoint for r in results if not r.ok})
    tested = sorted({r.endpoint for r in results})
    create_table_artifact(
        key=RESULTS_ARTIFACT_KEY,
        table=result_rows(results, skipped) or [{"endpoint": "-", "status": "nothing to test"}],
        description=(
            f"Smoke test ({workspace_kind} workspace): {len(tested)} endpoint(s) tested, "
            f"{len(failed)} failed" + (f" ({', '.join(failed)})" if failed else "")
            + f", {len(skipped)} skipped; {sum(r.ok for r in results)}/{len(results)} "
            "requests ok"
        ),
    )


def failure_summary(results: list[ProbeResult]) -> dict[str, list[ProbeResult]]:
    """Failed requests grouped by endpoint."""
    failed: dict[str, list[ProbeResult]] = {}
    for result in results:
        if not result.ok:
            failed.setdefault(result.endpoint, []).append(result)
    return failed


def describe_failure(endpoint: str, failures: list[ProbeResult]) -> str:
    """One line per endpoint for the flow's error message."""
    parts = sorted({f"{f.deployment}: {f.status}" for f in failures})
    return f"{endpoint} ({', '.join(parts)})"

