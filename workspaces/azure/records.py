"""Turn azure-ai-ml entities into the workspace records of :mod:`workspaces.interface`."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from workspaces.azure.pipeline import TAG_COMPONENT_VERSION
from workspaces.interface import (
    ComputeTarget,
    Deployment,
    Endpoint,
    FinetuneJob,
    FoundationModel,
    PipelineInput,
    PipelineInterface,
    RegisteredModel,
    VmSize,
)
from workspaces.model_tags import api_string

STUDIO = "https://ml.azure.com"
_TIERS = {"dedicated": "Dedicated", "low_priority": "LowPriority", "lowpriority": "LowPriority"}


def _tags(tags: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (tags or {}).items()}


def _created(entity: Any) -> datetime | None:
    value = getattr(entity, "creation_context", None) and entity.creation_context.created_at
    if isinstance(value, datetime):
        return value
    # Online endpoints carry no creation_context: the SDK copies systemData.createdAt into
    # their ``properties`` as "%Y-%m-%dT%H:%M:%S.%f%z" text (teardown needs the age).
    text = (getattr(entity, "properties", None) or {}).get("createdAt")
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def status_text(status: Any) -> str:
    """A job status as its REST string (the SDK may hand out a str enum)."""
    return str(getattr(status, "value", status) or "Unknown")


def foundation_model(model: Any) -> FoundationModel:
    """A registry model; its ``id`` (the ``azureml://registries/...`` asset id) is what the
    pipeline job takes as its model."""
    return FoundationModel(
        name=model.name,
        version=str(model.version),
        id=model.id,
        description=model.description or "",
        tags=_tags(model.tags),
    )


def compute_target(compute: Any, created: bool = False) -> ComputeTarget:
    """An AmlCompute cluster, its tier spelled as the interface does (``Dedicated``,
    ``LowPriority``); ``created`` says this call made it."""
    tier = str(getattr(compute, "tier", "") or "dedicated")
    return ComputeTarget(
        name=compute.name,
        size=compute.size or "",
        tier=_TIERS.get(tier.lower(), tier),
        provisioning_state=compute.provisioning_state or "Unknown",
        created=created,
        max_instances=getattr(compute, "max_instances", None) or 1,
    )


def vm_size(size: Any) -> VmSize:
    """A VM size of the region, with the vCPUs and quota family the quota checks need."""
    # azure-ai-ml 1.35 leaves vCPUs/memory under their REST keys, not the snake_case attributes.
    raw = vars(size)
    return VmSize(
        name=size.name,
        gpus=int(size.gpus or 0),
        vcpus=raw.get("vCPUs") or raw.get("v_cp_us"),
        memory_gb=raw.get("memoryGB") or raw.get("memory_gb"),
        family=getattr(size, "family", None) or raw.get("family"),
    )


def finetune_job(
    job: Any, current_step: str | None = None, error: str | None = None
) -> FinetuneJob:
    """``error`` is the service's own text of a failure (run history), never a summary."""
    services = getattr(job, "services", None) or {}
    studio = services.get("Studio")
    studio_url = getattr(studio, "endpoint", None) or job.studio_url
    tags = _tags(job.tags)
    return FinetuneJob(
        name=job.name,
        status=status_text(job.status),
        display_name=job.display_name or "",
        experiment_name=job.experiment_name or "",
        studio_url=studio_url,
        tags=tags,
        component_version=tags.get(TAG_COMPONENT_VERSION),
        current_step=current_step,
        error=error,
        created_at=_created(job),
    )


def registered_model(model: Any, workspace_arm_id: str) -> RegisteredModel:
    """A workspace model version, with its studio link in the workspace
    ``workspace_arm_id``."""
    return RegisteredModel(
        name=model.name,
        version=str(model.version),
        id=model.id,
        description=model.description or "",
        path=str(model.path or ""),
        tags=_tags(model.tags),
        url=f"{STUDIO}/model/{quote(model.name)}:{model.version}/details?wsid={workspace_arm_id}",
    )


def deployment(dep: Any) -> Deployment:
    """An online deployment, without an error: the workspace adds why it failed, which
    the deployment itself does not hold."""
    return Deployment(
        name=dep.name,
        endpoint_name=dep.endpoint_name,
        model_id=str(dep.model) if dep.model is not None else "",
        instance_type=dep.instance_type or "",
        instance_count=dep.instance_count or 0,
        provisioning_state=dep.provisioning_state or "Unknown",
        tags=_tags(dep.tags),
    )


def endpoint(ep: Any, deployments: list[Deployment], workspace_arm_id: str) -> Endpoint:
    """An online endpoint with the ``deployments`` the caller read for it (the entity
    does not carry them), its traffic as whole percentages and its studio link."""
    return Endpoint(
        name=ep.name,
        scoring_uri=ep.scoring_uri,
        auth_mode=str(ep.auth_mode or "key").lower(),
        provisioning_state=ep.provisioning_state or "Unknown",
        description=ep.description or "",
        traffic={k: int(v) for k, v in (ep.traffic or {}).items()},
        tags=_tags(ep.tags),
        created_at=_created(ep),
        url=f"{STUDIO}/endpoints/realtime/{quote(ep.name)}/detail?wsid={workspace_arm_id}",
        deployments=deployments,
    )


def operation_error(exc: Any) -> str:
    """``code: message`` of a failed long-running operation, as the service reported it."""
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", "") or "")
    message = str(getattr(error, "message", "") or "").strip()
    if not message:
        message = str(getattr(exc, "message", "") or exc).strip()
    return f"{code}: {message}" if code and code not in message[: len(code) + 2] else message


def run_error(details: Any, step: str | None = None) -> str | None:
    """``[step <name>: ]code: message`` of a run-history RunDetails that carries an error."""
    root = getattr(getattr(details, "error", None), "error", None)
    if root is None or not (root.message or root.code):
        return None
    text = f"{root.code}: {root.message}" if root.code else str(root.message)
    return f"step {step}: {text}" if step else text


def pipeline_interface(component: Any) -> PipelineInterface:
    """The registry component's inputs: type, default, optional flag, enum and bounds."""
    inputs = {}
    for name, spec in (component.inputs or {}).items():
        enum = getattr(spec, "enum", None)
        inputs[name] = PipelineInput(
            type=str(spec.type),
            optional=bool(getattr(spec, "optional", False)),
            default=None if spec.default is None else api_string(spec.default),
            enum=None if enum is None else [api_string(v) for v in enum],
            min=_bound(getattr(spec, "min", None)),
            max=_bound(getattr(spec, "max", None)),
        )
    return PipelineInterface(
        component=str(component.name), version=str(component.version), inputs=inputs
    )


def _bound(value: Any) -> float | None:
    return None if value is None else float(value)
