"""Step 2 of docs/procedure.md: look the foundation model up, have its weights ready,
resolve the fine-tune inputs its tags steer."""

from __future__ import annotations

from datetime import timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import WORKSPACE_INPUTS, transient_retries
from workspaces.errors import InvalidRequest
from workspaces.interface import FoundationModel, Workspace
from workspaces.model_tags import model_specific_defaults, retirement_status


# The registry's `latest` moves when a new version ships, so the lookup expires daily.
@task(
    name="get-foundation-model",
    cache_policy=WORKSPACE_INPUTS,
    cache_expiration=timedelta(days=1),
    **transient_retries(),
)
def get_foundation_model(workspace: Workspace, name: str, label: str) -> FoundationModel:
    """Look the base model up by name and label, refusing retired models (true-ish
    retired/deprecated tag, or a retirement/deprecation date that has passed); a date
    still ahead only warns."""
    logger = get_run_logger()
    logger.info("Looking up foundation model %s (label %s)", name, label)
    model = workspace.get_foundation_model(name, label)
    logger.info("Foundation model %s version %s (%s)", model.name, model.version, model.id)
    refusal, warnings = retirement_status(model)
    for warning in warnings:
        logger.warning("%s", warning)
    if refusal:
        raise InvalidRequest(f"{refusal}; choose another foundation_model or version")
    return model


# Not cached by Prefect: the workspace's catalog folder is the cache (a marker file says
# the conversion finished), so a deleted workspace is rebuilt rather than trusted.
@task(name="prepare-foundation-model", cache_policy=NO_CACHE, **transient_retries())
def prepare_foundation_model(workspace: Workspace, model: FoundationModel) -> str:
    """Have the model's weights ready: converted once on the local workspace, logged."""
    logger = get_run_logger()
    location = workspace.prepare_foundation_model(model, logger.info)
    logger.info("Foundation model %s weights: %s", model.name, location)
    return location


@task(name="resolve-finetune-parameters", cache_policy=WORKSPACE_INPUTS)
def resolve_finetune_parameters(
    model: FoundationModel, requested: dict[str, str], apply_model_defaults: bool
) -> dict[str, str]:
    """Merge training and optimization inputs, then the model's model_specific_defaults."""
    logger = get_run_logger()
    parameters = dict(requested)
    defaults = model_specific_defaults(model)
    if defaults and apply_model_defaults:
        changes = [
            f"{k}: {parameters.get(k, '(unset)')} -> {v}"
            for k, v in defaults.items() if parameters.get(k) != v
        ]
        logger.warning(
            "Model %s has model_specific_defaults that override fine-tune parameters: %s",
            model.name, "; ".join(changes) or "no change",
        )
        parameters.update(defaults)
    return parameters
