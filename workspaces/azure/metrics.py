"""Job metrics through MLflow, the way Azure ML exposes run metrics (step 5 of docs/procedure.md).

The workspace's ``mlFlowTrackingUri`` (``azureml://<host>/mlflow/v1.0/...``) is turned into its
HTTPS form and read with MLflow's own REST store, authenticated per request with a token
from the workspace credential. That needs neither the ``azureml-mlflow`` plugin nor a
process-wide ``mlflow.set_tracking_uri``/``MLFLOW_TRACKING_TOKEN`` (which would leak the
token to every MLflow user in the process), and it is plain HTTPS a fake can answer.
Child runs of a pipeline carry the tag ``mlflow.parentRunId``; the finetune and evaluation
steps are found by run name, one or two levels below the pipeline run (the registry's
pipeline runs as one node holding its steps). Each search returns the latest value of
every metric of each run, so the metrics need no further request; a metric's history is
read only for the loss curves (:data:`HISTORY_METRICS`), every page of it.

The registry's ``chat_completion_pipeline`` (Azure/azureml-assets, its spec.yaml) names its
finetune node ``chat_completion_finetune``. Its evaluation nodes, ``model_prediction`` and
``compute_metrics``, are commented out in most versions, the latest (0.0.82) included; they
ran in 0.0.68-0.0.74 and 0.0.77-0.0.78, logging bleu, rouge and ``mean_perplexity``, none of
them a gate figure.
So on Azure the evaluation is usually not found, and the gate reads the finetune step's
``eval_loss`` (tasks/release_gate.py, ``job_figures``).
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
# The per-step series JobMetrics.finetune_history keeps: the loss curves (HF Trainer logs
# ``loss`` per logging step and ``eval_loss`` per evaluation; ``train_loss`` is a series
# in some trainers, HF Trainer's mean at the end). Every other metric is a summary whose
# latest value the search already returned: reading its history would be a request each.
HISTORY_METRICS = ("loss", "train_loss", "eval_loss")
# Runs per search page; a step's children fit in one, and further pages are read if not.
PAGE_SIZE = 100
# pipeline -> (pipeline component node) -> steps
MAX_DEPTH = 3


def https_tracking_uri(tracking_uri: str) -> str:
    """``azureml://host/path`` -> ``https://host/path`` (already-HTTPS URIs pass through)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("https", "http"):
        return tracking_uri.rstrip("/")
    return f"https://{parts.netloc}{parts.path}".rstrip("/")


def make_store(tracking_uri: str, token: Callable[[], str]) -> RestStore:
    """MLflow's REST store on the workspace's tracking server (``azureml://`` URIs are
    read over HTTPS). ``token`` is called for every request, so the credential renews an
    expired token and no token is ever set process-wide."""
    host = https_tracking_uri(tracking_uri)
    return RestStore(lambda: MlflowHostCreds(host=host, token=token()))


def _child_runs(store: RestStore, experiment_id: str, parent: str) -> list[Any]:
    """Every child run of ``parent``, page after page. Azure's MLflow filters on a tag
    with ``=`` only (no IN, no OR), so each parent is one search."""
    runs: list[Any] = []
    token = None
    while True:
        page = store.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}'",
            run_view_type=ViewType.ALL,
            max_results=PAGE_SIZE,
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _run_name(run: Any) -> str:
    return (run.info.run_name or run.data.tags.get("mlflow.runName") or "").lower()


def _named(current: Any, runs: list[Any], word: str) -> Any:
    """The first of ``runs`` named with ``word``, unless ``current`` already holds metrics
    (a step found higher up that is a pipeline of its own gives way to its own step)."""
    if current is not None and current.data.metrics:
        return current
    return next((r for r in runs if word in _run_name(r)), current)


def _find_steps(store: RestStore, experiment_id: str, job_name: str) -> tuple[Any, Any]:
    """The finetune and evaluation runs of the job, searching level by level.

    Below the level where the finetune step is found only runs named as a step that hold
    no metrics are searched (a step that is a pipeline of its own): the evaluation, when
    the pipeline has one, is the finetune step's sibling, so the other steps' children,
    which a pipeline without an evaluation step would otherwise send a search each for,
    are never asked for.
    """
    finetune = evaluation = None
    frontier = [job_name]
    for _depth in range(MAX_DEPTH):
        level = [run for parent in frontier for run in _child_runs(store, experiment_id, parent)]
        finetune = _named(finetune, level, "finetune")
        evaluation = _named(evaluation, level, "evaluat")
        if finetune is None:
            frontier = [run.info.run_id for run in level]
        else:
            here = {run.info.run_id for run in level}
            frontier = [run.info.run_id for run in (finetune, evaluation)
                        if run is not None and not run.data.metrics and run.info.run_id in here]
        if not frontier:
            break
    return finetune, evaluation


def _history(store: RestStore, run_id: str, key: str, room: int) -> list[Any]:
    """Up to ``room`` points of one metric, following the server's pages."""
    points: list[Any] = []
    token = None
    while len(points) < room:
        page = store.get_metric_history(run_id, key, max_results=room - len(points),
                                        page_token=token)
        points += list(page)
        token = page.token
        if not token:
            break
    return points[:room]


def read_job_metrics(store: RestStore, experiment_name: str, job_name: str) -> JobMetrics:
    """Latest metrics of the finetune and evaluation runs, plus the finetune loss curves."""
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
            for key in sorted(set(HISTORY_METRICS) & set(finetune.data.metrics)):
                room = MAX_HISTORY_ROWS - len(history)
                history += [{"step": m.step, "metric": key, "value": m.value}
                            for m in _history(store, finetune.info.run_id, key, room)]
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
