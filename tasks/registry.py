"""Step 6 of docs/procedure.md: register the job's trained_model as an MLflow model version."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import transient_retries
from workspaces.interface import RegisteredModel, Workspace
from workspaces.ownership import owner_of, refuse_foreign_model


# Not cached by Prefect: the registry is the record, and (name, version) is unique there.
@task(name="register-model", cache_policy=NO_CACHE, **transient_retries())
def register_model(
    workspace: Workspace,
    name: str,
    version: str,
    job_name: str,
    description: str,
    tags: dict[str, str],
) -> RegisteredModel:
    """Register ``azureml://jobs/<job>/outputs/trained_model`` (or the local job's output).

    A version that exists is reused only when it is this request's (its request tag, the
    one in ``tags``); another request's is refused naming both, never taken as ours.
    """
    logger = get_run_logger()
    owner = owner_of(tags)
    existing = workspace.get_model(name, version)
    if existing is not None:
        refuse_foreign_model(name, version, existing.tags, owner)
        logger.info("Reusing registered model %s version %s", name, version)
        return existing
    logger.info("Registering the output of job %s as model %s version %s (copies the "
                "weights)", job_name, name, version)
    model = workspace.register_model(name, version, job_name, description, tags, owner=owner)
    logger.info("Registered model %s version %s from job %s", name, version, job_name)
    return model
