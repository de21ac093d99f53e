"""Step 7 of finetune_and_deploy: the endpoint, the model's deployment, all traffic to it.

:func:`deploy` is the step for a request with ``rollout.strategy: new-endpoint``. A canary
release (:mod:`flows.rollout`) starts the same way when its endpoint does not exist yet: it
calls :func:`create_endpoint_and_deployment` with the endpoint already claimed for the
release, then moves the traffic in the release's own write, so the traffic and the
release's recorded step never disagree.
"""

from __future__ import annotations

from flows.parameters import FinetuneRequest
from flows.preflight import FinetunePlan
from tasks import reports
from tasks.endpoints import create_deployment, create_endpoint, route_traffic
from workspaces.interface import (
    TAG_FLOW_RUN,
    Endpoint,
    EndpointSpec,
    RegisteredModel,
    Workspace,
)


def create_endpoint_and_deployment(
    workspace: Workspace,
    request: FinetuneRequest,
    plan: FinetunePlan,
    model: RegisteredModel,
    this_run: str,
    endpoint: EndpointSpec,
) -> tuple[Endpoint, bool]:
    """The endpoint ``endpoint`` describes (made, or an earlier run's found) and the plan's
    deployment of ``model`` behind it; no traffic is moved.

    Returns:
        The endpoint as created or found, and whether an earlier run had made it.
    """
    made = create_endpoint(workspace, endpoint, request.deployment_timeout_minutes)
    reused = made.tags.get(TAG_FLOW_RUN) != this_run
    create_deployment(
        workspace, plan.deployment_spec(model, this_run), request.deployment_timeout_minutes
    )
    return made, reused


def deploy(
    workspace: Workspace,
    request: FinetuneRequest,
    plan: FinetunePlan,
    registered: RegisteredModel,
    this_run: str,
) -> tuple[Endpoint, bool]:
    """Step 7: the endpoint, the deployment, all traffic to it.

    Returns:
        The endpoint as routed, and whether an earlier run had made it.
    """
    _, reused = create_endpoint_and_deployment(
        workspace, request, plan, registered, this_run,
        EndpointSpec(
            name=plan.endpoint_name,
            description=f"Serves {registered.name} version {registered.version} "
            "(ultrachat_200k chat-completion fine-tune)",
            tags=plan.managed_tags(this_run, registered), owner=plan.request_id,
            take_over=request.take_over,
        ),
    )
    endpoint = route_traffic(
        workspace, plan.endpoint_name, {plan.deployment_name: 100}, owner=plan.request_id
    )
    reports.report_endpoint(endpoint, plan.deployment_name, reused)
    reports.emit(
        "endpoint.deployed",
        plan.endpoint_name,
        workspace.kind,
        {
            "model": registered.name,
            "version": registered.version,
            "deployment": plan.deployment_name,
            "scoring_uri": endpoint.scoring_uri,
            "reused": reused,
        },
    )
    return endpoint, reused
