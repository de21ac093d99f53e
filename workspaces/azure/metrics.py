"""Job metrics through MLflow, the way Azure ML exposes run metrics (step 5 of docs/procedure.md).

The workspace's ``mlFlowTrackingUri`` (``azureml://<host>/mlflow/v1.0/...``) is turned into its
HTTPS form and read with MLflow's own REST store, authenticated per request with a token
from the workspace credential. That needs neither the ``azureml-mlflow`` plugin nor a
process-wide ``mlflow.set_tracking_uri``/``MLFLOW_TRACKING_TOKEN`` (which would leak the
token to every MLflow user in the process), and it is plain HTTPS a fake can answer.
Child runs of a pipeline carry the tag ``mlflow.parentRunId``; the finetune and evaluation
steps are found by run name, one or two levels below the pipeline run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.rest_utils import MlflowHostCreds

from workspaces.azure.errors import ROLE_HINT
from workspaces.errors import AuthenticationFailed, ResourceNotFound, TransientWorkspaceError
from workspaces.interface import JobMetrics

MAX_HISTORY_ROWS = 2000


def https_tracking_uri(tracking_uri: str) -> str:
    """``azureml://host/path`` -> ``https://host/path`` (already-HTTPS URIs pass through)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("https", "http"):
        return tracking_uri.rstrip("/")
    return f"https://{parts.netloc}{parts.path}".rstrip("/")


def make_store(tracking_uri: str, token: Callable[[], str]) -> RestStore:
    host = https_tracking_uri(tracking_uri)
    return RestStore(lambda: MlflowHostCreds(host=host, token=token()))


def _child_runs(store: RestStore, experiment_id: str, parent: str) -> list[Any]:
    return list(
        store.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}'",
            run_view_type=ViewType.ALL,
            max_results=100,
        )
    )


def _run_name(run: Any) -> str:
    return (run.info.run_name or run.data.tags.get("mlflow.runName") or "").lower()


def _find_steps(store: RestStore, experiment_id: str, job_name: str) -> tuple[Any, Any]:
    finetune = evaluation = None
    frontier = [job_name]
    for _depth in range(3):  # pipeline -> (pipeline component node) -> steps
        next_frontier = []
        for parent in frontier:
            for run in _child_runs(store, experiment_id, parent):
                name = _run_name(run)
                if finetune is None and "finetune" in name:
                    finetune = run
                elif evaluation is None and "evaluat" in name:
                    evaluation = run
                next_frontier.append(run.info.run_id)
        if finetune and evaluation:
            break
        frontier = next_frontier
    return finetune, evaluation


def read_job_metrics(store: RestStore, experiment_name: str, job_name: str) -> JobMetrics:
    """Latest metrics of the finetune and evaluation runs, plus the finetune history."""
    try:
        experiment = store.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise ResourceNotFound(
                f"experiment {experiment_name!r} has no MLflow runs yet; job {job_name} "
                "may not have started"
            )
        finetune, evaluation = _find_steps(store, experiment.experiment_id, job_name)
        history: list[dict[str, Any]] = []
        if finetune is not None:
            for key in sorted(finetune.data.metrics):
                for m in store.get_metric_history(finetune.info.run_id, key):
                    if len(history) < MAX_HISTORY_ROWS:
                        history.append({"step": m.step, "metric": key, "value": m.value})
    except MlflowException as exc:
        raise _mlflow_error(exc, job_name) from None
    return JobMetrics(
        finetune=dict(finetune.data.metrics) if finetune else {},
        evaluation=dict(evaluation.data.metrics) if evaluation else {},
        finetune_history=history,
    )


def _mlflow_error(exc: MlflowException, job_name: str) -> Exception:
    code = str(exc.error_code)
    where = f"metrics of job {job_name} from the workspace's MLflow tracking server"
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return AuthenticationFailed(f"the credential may not read {where} ({code}); {ROLE_HINT}")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return ResourceNotFound(f"no {where} ({code})")
    return TransientWorkspaceError(f"could not read {where} ({code}); retry later")
