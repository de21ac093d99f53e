"""Steps 7-9 of docs/procedure.md: endpoint, deployment, traffic, a scored sample, deletion."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import transient_retries
from tasks.waiting import poll_until
from workspaces.compute_rules import check_inference_size
from workspaces.errors import (
    InvalidRequest,
    OwnershipConflict,
    QuotaExceeded,
    ResourceNotFound,
    WorkspaceError,
)
from workspaces.failure_advice import failure_class, with_advice
from workspaces.interface import (
    Deployment,
    DeploymentSpec,
    Endpoint,
    EndpointSpec,
    FoundationModel,
    ScoreResponse,
    Workspace,
)
from workspaces.model_tags import INFERENCE_ALLOW_LIST, allow_list
from workspaces.ownership import ENDPOINT_ADVICE, foreign, refuse_foreign, refuse_take_over
from workspaces.scoring import build_body, normalize_answer, read_reply, up_to_last_question
from workspaces.ultrachat import read_jsonl

PROVISIONED = ("Succeeded", "Failed", "Canceled")
# What wait_provisioned polls: an endpoint or a deployment.
Resource = TypeVar("Resource", Endpoint, Deployment)


# Endpoint tasks are not cached by Prefect: an endpoint may be deleted between runs (the
# teardown flow does that), and get-or-create by name is what keeps them idempotent.
@task(name="create-endpoint", cache_policy=NO_CACHE, **transient_retries())
def create_endpoint(workspace: Workspace, spec: EndpointSpec, timeout_minutes: float) -> Endpoint:
    """Create the key-auth endpoint, or reuse it when it is this request's; wait until it
    is provisioned.

    The owner (``spec.owner``) is checked again here, at the write (another request may
    have made the name while this one trained): a foreign endpoint is refused, or taken
    over with ``spec.take_over``.

    Args:
        workspace: where the endpoint lives.
        spec: the endpoint, its tags and the request it is made for.
        timeout_minutes: how long provisioning may take.

    Returns:
        The endpoint once provisioned.
    """
    logger = get_run_logger()
    name, owner = spec.name, spec.owner
    endpoint = workspace.get_endpoint(name)
    taken = foreign(f"endpoint {name}", endpoint.tags, owner) if endpoint is not None else None
    if endpoint is not None and taken:
        if not spec.take_over:
            refuse_foreign(f"endpoint {name}", endpoint.tags, owner, ENDPOINT_ADVICE)
        logger.warning("Taking over (take_over=true): %s; its traffic stays until this "
                       "request's deployment is ready", taken)
        workspace.begin_create_endpoint(spec)
    elif endpoint is not None and endpoint.healthy is False and endpoint.provisioning_state in (
        "Succeeded", "Creating"
    ):
        # Its serving process died, or a killed run left it half-created (local only: Azure
        # reports healthy=None). Create-or-update brings the server back, as `chatft
        # endpoints restart` does, and leaves a server that is still starting alone.
        logger.warning("Endpoint %s does not answer (%s); making sure its server runs",
                       name, endpoint.provisioning_state)
        workspace.begin_create_endpoint(spec.model_copy(update={"take_over": False}))
    elif endpoint is not None and endpoint.provisioning_state == "Succeeded":
        logger.info("Reusing endpoint %s (Succeeded)", name)
        return endpoint  # provisioned: reading it again to wait would tell nothing new
    elif endpoint is not None and endpoint.provisioning_state not in ("Failed", "Canceled"):
        logger.info("Reusing endpoint %s (%s)", name, endpoint.provisioning_state)
    else:
        workspace.begin_create_endpoint(spec.model_copy(update={"take_over": False}))
        logger.info("Creating endpoint %s", name)

    return wait_provisioned(
        workspace, f"endpoint {name}", lambda: workspace.get_endpoint(name), timeout_minutes
    )


@task(name="create-deployment", cache_policy=NO_CACHE, **transient_retries())
def create_deployment(
    workspace: Workspace, spec: DeploymentSpec, timeout_minutes: float
) -> Deployment:
    """Create the deployment, or reuse it when it serves the same model; wait until it is
    provisioned.

    Args:
        workspace: where the endpoint lives.
        spec: the deployment (model, size, liveness delay 600 s and request timeout
            90,000 ms by default) and the request whose endpoint it must be.
        timeout_minutes: how long provisioning may take.

    Returns:
        The deployment once Succeeded; a Failed one raises with the service's error and
        the last log lines.
    """
    logger = get_run_logger()
    endpoint_name, name, model_id = spec.endpoint_name, spec.name, spec.model_id
    deployment = workspace.get_deployment(endpoint_name, name)
    if deployment is not None and deployment.model_id != model_id:
        raise InvalidRequest(
            f"deployment {name} on {endpoint_name} serves {deployment.model_id}, not {model_id}; "
            "choose another deployment_name or endpoint_name"
        )
    if deployment is not None and deployment.provisioning_state == "Succeeded":
        logger.info("Reusing deployment %s on %s", name, endpoint_name)
        return deployment
    if deployment is not None and deployment.provisioning_state in ("Failed", "Canceled"):
        # A failed deployment is replaced (create-or-update), not failed on again.
        logger.warning("Deployment %s on %s is %s; replacing it", name, endpoint_name,
                       deployment.provisioning_state)
        deployment = None
    if deployment is None:
        workspace.begin_create_deployment(spec)
        logger.info("Creating deployment %s on %s (%s x %d)",
                    name, endpoint_name, spec.instance_type, spec.instance_count)
    return wait_provisioned(
        workspace, f"deployment {name} on {endpoint_name}",
        lambda: workspace.get_deployment(endpoint_name, name), timeout_minutes,
        logs=lambda: _log_tail(workspace, endpoint_name, name),
    )


def wait_provisioned(
    workspace: Workspace,
    what: str,
    read: Callable[[], Resource | None],
    timeout_minutes: float,
    logs: Callable[[], str] = lambda: "",
) -> Resource:
    """Poll ``read`` until the endpoint or deployment is provisioned; log each new state.

    Returns:
        The resource once Succeeded.

    Raises:
        WorkspaceError: it ended Failed or Canceled (the service's error, advice, and the
            ``logs`` tail), or it vanished while it was being created.
        DeadlineExceeded: still provisioning after ``timeout_minutes``.
    """
    logger = get_run_logger()
    last: dict[str, str] = {}

    def current() -> Resource:
        resource = read()
        if resource is None:
            raise ResourceNotFound(f"{what} vanished while it was being created")
        if resource.provisioning_state != last.get("state"):
            logger.info("%s: %s", what[0].upper() + what[1:], resource.provisioning_state)
            last["state"] = resource.provisioning_state
        return resource

    resource = poll_until(
        current, lambda r: r.provisioning_state in PROVISIONED, timeout_minutes * 60,
        f"{what} provisioning", max_delay_s=workspace.max_poll_interval_s,
    )
    if resource.provisioning_state != "Succeeded":
        raise provisioning_failure(what, resource.provisioning_state, resource.error, logs())
    return resource


def provisioning_failure(
    what: str, state: str, error: str | None, logs: str = ""
) -> WorkspaceError:
    """The error for an endpoint or deployment that ended Failed/Canceled: the service's
    code and message, one sentence of advice for a known class, then the log tail."""
    cause = error or "the service gave no error text"
    message = with_advice(f"{what} ended {state}: {cause}", cause)
    message += " Run again to replace it." if "run again" not in message.lower() else ""
    if logs.strip():
        message += f"\nLast log lines:\n{logs.strip()}"
    error_class = QuotaExceeded if failure_class(cause) in ("OutOfQuota", "quota") else (
        WorkspaceError)
    return error_class(message)


def _log_tail(workspace: Workspace, endpoint_name: str, name: str) -> str:
    # The logs help with a crash; their absence must not hide the failure itself.
    try:
        return workspace.get_deployment_logs(endpoint_name, name, lines=20)
    except WorkspaceError:
        return ""


@task(name="route-traffic", cache_policy=NO_CACHE, **transient_retries())
def route_traffic(
    workspace: Workspace, endpoint_name: str, traffic: dict[str, int], owner: str | None = None
) -> Endpoint:
    """Send the given share of traffic to each deployment (100 % to demo).

    With ``owner`` (a request id) only that request's endpoint is routed; the workspace
    checks it again at the write.
    """
    endpoint = workspace.get_endpoint(endpoint_name)
    if endpoint is not None:
        refuse_foreign(f"endpoint {endpoint_name}", endpoint.tags, owner, ENDPOINT_ADVICE)
    if endpoint is not None and endpoint.traffic == traffic:
        get_run_logger().info("Traffic of %s already %s", endpoint_name, traffic)
        return endpoint
    endpoint = workspace.set_traffic(endpoint_name, traffic, owner=owner)
    get_run_logger().info("Traffic of %s set to %s", endpoint_name, traffic)
    return endpoint


def sample_request(
    test_gen_file: str, parameters: dict[str, Any], seed: int,
    evaluated: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The step-8 body: a held-out question that shows what tuning changed.

    ``evaluated`` are the job's own held-out questions with the base and the tuned model's
    greedy replies. A question the base model already answered as the tuned one does shows
    nothing of the tuning, so the body asks, by preference, one the tuned model answers
    exactly and the base model does not, else one whose two replies differ; only when the
    job recorded none (Azure's pipeline does not) a random test_gen row. Seeded, so a
    re-run asks the same.
    """
    chosen = telling_question(evaluated or [], seed)
    if chosen is not None:
        return build_body(chosen, parameters)
    return sample_requests(test_gen_file, parameters, [seed])[0]


def telling_question(
    evaluated: list[dict[str, Any]], seed: int
) -> list[dict[str, str]] | None:
    """The conversation of one evaluated question whose base and tuned replies differ."""
    def answers(sample: dict[str, Any], key: str) -> bool:
        return normalize_answer(sample.get(key) or "") == normalize_answer(
            sample.get("reference") or "")

    differ = [s for s in evaluated if s.get("messages")
              and normalize_answer(s.get("base_reply") or "")
              != normalize_answer(s.get("tuned_reply") or "")]
    fixed = [s for s in differ if answers(s, "tuned_reply") and not answers(s, "base_reply")]
    pool = fixed or differ
    return random.Random(seed).choice(pool)["messages"] if pool else None


def sample_requests(
    test_gen_file: str, parameters: dict[str, Any], seeds: list[int]
) -> list[dict[str, Any]]:
    """One step-8 body per seed, each from a random test_gen row; the file is read once.

    Each row's conversation is cut after its last question: test_gen rows end with the
    reference answer, and the model is asked to give it. The body is built (and checked)
    once, and sent as built.
    """
    return [body for body, _ in sample_questions(test_gen_file, parameters, seeds)]


def sample_questions(
    test_gen_file: str, parameters: dict[str, Any], seeds: list[int]
) -> list[tuple[dict[str, Any], str]]:
    """Like :func:`sample_requests`, each body with the reference answer its row ends with
    (a reply is an exact answer when it equals it, as the job's evaluation counts)."""
    rows = read_jsonl(Path(test_gen_file))
    found = []
    for seed in seeds:
        messages = random.Random(seed).choice(rows)["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        found.append((build_body(up_to_last_question(messages), parameters),
                      answers[-1] if answers else ""))
    return found


# A measurement: done on every run.
@task(name="score-sample", cache_policy=NO_CACHE, **transient_retries())
def score_sample(
    workspace: Workspace,
    endpoint_name: str,
    deployment_name: str,
    body: dict[str, Any],
    request_file: str,
) -> ScoreResponse:
    """Write the request to ``request_file`` and send it to the deployment with the key."""
    get_run_logger().info("Sending the sample conversation to %s/%s and waiting for the reply",
                          endpoint_name, deployment_name)
    target = Path(request_file)
    text = json.dumps(body, indent=2)
    try:
        # A re-run's body is the same: left as it is, the workspace stays as the run left it.
        if not target.is_file() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written whole, then renamed: a reader never sees half a body.
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            partial.write_text(text)
            os.replace(partial, target)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot write the sample request to {target} ({exc.strerror or exc}); make "
            f"{target.parent} writable"
        ) from None
    response = workspace.invoke(
        endpoint_name, body, deployment_name=deployment_name, caller="finetune-and-deploy"
    )
    logger = get_run_logger()
    logger.info("Scoring answered %d in %.0f ms: %s",
                response.status_code, response.latency_ms, response.body[:500])
    if response.status_code != 200:
        raise WorkspaceError(
            f"scoring {endpoint_name}/{deployment_name} answered {response.status_code}: "
            f"{response.body[:300]}"
        )
    return response


# Deletion on Azure takes minutes. Where the workspace follows the service's operation
# (Azure), checking costs no request and the service's Retry-After paces the real polls;
# elsewhere each check is one read, so back off gently.
DELETE_POLL_MAX_DELAY_S = 30.0


# The one task that deletes an endpoint: step 9 and the teardown both use it.
@task(name="delete-endpoint", cache_policy=NO_CACHE, **transient_retries())
def delete_endpoint(workspace: Workspace, name: str, timeout_minutes: float = 30) -> bool:
    """Delete the endpoint (and its deployments) and wait until the workspace has it no more.

    Args:
        workspace: where the endpoint lives.
        name: the endpoint.
        timeout_minutes: how long to wait for the deletion to finish.

    Returns:
        True when this call deleted it; False when it was gone already (another run, a
        person, or this task's own earlier attempt whose answer was lost).

    Example:
        ``delete_endpoint(workspace, "ultrachat-completion-3735928559")``
    """
    logger = get_run_logger()
    try:
        workspace.begin_delete_endpoint(name)
    except ResourceNotFound:
        logger.info("Endpoint %s does not exist; nothing to delete", name)
        return False
    logger.info("Deleting endpoint %s and waiting until it is gone", name)
    poll_until(
        lambda: workspace.deletion_finished(name), bool, timeout_minutes * 60,
        f"deletion of endpoint {name}", max_delay_s=DELETE_POLL_MAX_DELAY_S,
    )
    logger.info("Deleted endpoint %s", name)
    return True


def reply_text(response: ScoreResponse) -> str:
    """The generated text of a 200 chat-completion answer (``{"output": ...}``).

    Raises :class:`workspaces.scoring.BadReply` when the answer breaks the contract.
    """
    return read_reply(response.body)


# Not cached: who owns a name can change between runs (another request, a teardown).
@task(name="check-endpoint-ownership", cache_policy=NO_CACHE, **transient_retries())
def check_endpoint_ownership(
    workspace: Workspace,
    endpoint_name: str,
    deployment_name: str,
    request_id: str,
    take_over: bool,
) -> None:
    """Refuse, before anything is trained, an endpoint or deployment another request owns.

    The owner is the request tag a resource was made with; a resource without our tags is
    not ours either. ``take_over`` lets this request use it anyway.
    """
    endpoint = workspace.get_endpoint(endpoint_name)
    if endpoint is None:
        return
    # The endpoint's record carries its deployments: no second read for the one we need.
    deployment = next((d for d in endpoint.deployments if d.name == deployment_name), None)
    problems = [foreign(f"endpoint {endpoint_name}", endpoint.tags, request_id)]
    if deployment is not None:
        problems.append(
            foreign(f"deployment {deployment_name} on it", deployment.tags, request_id)
        )
    owners = [problem for problem in problems if problem]
    if not owners:
        return
    if take_over:
        try:
            refuse_take_over(f"endpoint {endpoint_name}", endpoint.tags)
        except OwnershipConflict as exc:
            raise InvalidRequest(f"take_over: {exc}") from None
        get_run_logger().warning("Taking over (take_over=true): %s", "; ".join(owners))
        return
    raise InvalidRequest(
        "; ".join(owners) + f" (this request is {request_id}). Choose another endpoint_name "
        "or deployment_name, or set take_over=true to take it over"
    )


# Not cached: cheap, and a refusal must be said again on every run.
@task(name="check-serving-size", cache_policy=NO_CACHE)
def check_serving_size(
    workspace: Workspace, model: FoundationModel, instance_type: str, instance_count: int
) -> None:
    """Refuse a deployment size the model's inference allow list or the workspace forbids.

    Args:
        workspace: where the deployment would run.
        model: the foundation model, whose ``inference_compute_allow_list`` applies.
        instance_type: the deployment's VM size.
        instance_count: how many instances serve it.

    Raises:
        InvalidRequest: naming ``instance_type`` or ``instance_count`` and what is allowed.
        QuotaExceeded: the workspace has no room for that many instances.
    """
    problem = check_inference_size(instance_type, allow_list(model, INFERENCE_ALLOW_LIST))
    if problem:
        raise InvalidRequest(f"instance_type: {problem}")
    problem = workspace.deployment_size_problem(instance_type, instance_count)
    if problem:
        raise InvalidRequest(problem)
