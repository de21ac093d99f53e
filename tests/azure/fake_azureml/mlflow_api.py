"""The fake's MLflow tracking API (``/api/2.0/mlflow/...`` under the workspace's
``mlFlowTrackingUri``), answered the way an MLflow tracking server answers it.

Requests are parsed into MLflow's own protobuf messages (mlflow/protos/service.proto) and
answers are serialized from them, as ``mlflow.server.handlers`` does; runs are searched
the way MLflow's file store does (``SearchUtils.filter``, ``sort``, ``paginate``), so a
search applies its filter, returns ``max_results`` runs (1000 when unset) and a
``next_page_token`` while more match, and each run carries the latest value of each of
its metrics. ``metrics/get-history`` returns every point in one answer unless the client
sends ``max_results``; then it pages with ``page_token`` (SqlAlchemyStore's behaviour).

What Azure ML's MLflow server refuses, as its support matrix states (Microsoft Learn,
"Query & compare experiments and runs with MLflow"): ``LIKE``/``ILIKE``, ``!=`` on tags
and filters on ``attributes.status``. The fake refuses them with
``INVALID_PARAMETER_VALUE`` (the wording is the fake's own).

``max_page`` is a fault knob: the most rows one answer holds, whatever the client asks
(None: as many as asked), for tests that check every page is read.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import ParseError
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    ENDPOINT_NOT_FOUND,
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.protos.service_pb2 import GetExperimentByName, GetMetricHistory, GetRun, SearchRuns
from mlflow.utils.proto_json_utils import message_to_json, parse_dict
from mlflow.utils.search_utils import SearchUtils

from tests.azure.fake_azureml.server import Recorded, Response

START_MS = 1_700_000_000_000
# Azure ML job status -> MLflow run status (Microsoft Learn's table, same article).
RUN_STATUS = {"NotStarted": "SCHEDULED", "Queued": "SCHEDULED", "Running": "RUNNING",
              "Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}
# Refused by Azure's MLflow server: (identifier type, comparator); None = any.
AZURE_UNSUPPORTED = [(None, "LIKE"), (None, "ILIKE"), ("tag", "!="), ("attribute", None)]
# The one attribute its examples filter on (``attributes.run_id IN (...)``); the matrix
# marks filters on other attributes and on run fields (start_time, ...) unsupported.
AZURE_ATTRIBUTES = {"run_id"}


def answer(req: Recorded, call: str, experiments: dict[str, str],
           runs: dict[str, dict[str, Any]], max_page: int | None = None) -> Response:
    """The answer to one MLflow REST call on the fake's experiments and runs."""
    handlers = {
        "experiments/get-by-name": _get_experiment_by_name,
        "runs/get": _get_run,
        "runs/search": _search_runs,
        "metrics/get-history": _get_metric_history,
    }
    handler = handlers.get(call)
    try:
        if handler is None:
            raise MlflowException(f"no MLflow API {req.method} {call}", ENDPOINT_NOT_FOUND)
        return Response(200, handler(req, experiments, runs, max_page))
    except MlflowException as exc:
        return Response(exc.get_http_status_code(), json.loads(exc.serialize_as_json()))


def _message(req: Recorded, message: Any) -> Any:
    """``req`` as the protobuf ``message``: a GET's query, else its JSON body (the server
    parses both this way)."""
    if req.method == "GET":
        data: dict[str, Any] = {}
        for field in message.DESCRIPTOR.fields:
            if field.name in req.query:
                value = req.query[field.name]
                data[field.name] = [value] if field.is_repeated else value
    else:
        data = req.json or {}
    try:
        parse_dict(data, message)
    except ParseError as exc:
        raise MlflowException(f"malformed request: {exc}", INVALID_PARAMETER_VALUE) from None
    return message


def _json(message: Any) -> dict[str, Any]:
    return json.loads(message_to_json(message))


def _get_experiment_by_name(req: Recorded, experiments: dict[str, str], runs: Any,
                            max_page: int | None) -> dict[str, Any]:
    name = _message(req, GetExperimentByName()).experiment_name
    if name not in experiments:
        raise MlflowException(f"Could not find experiment with name '{name}'",
                              RESOURCE_DOES_NOT_EXIST)
    response = GetExperimentByName.Response()
    response.experiment.experiment_id = experiments[name]
    response.experiment.name = name
    response.experiment.lifecycle_stage = "active"
    return _json(response)


def run_entity(run: dict[str, Any]) -> Run:
    """The fake's run as MLflow's Run: tags ``mlflow.runName``, ``mlflow.parentRunId``,
    and the latest point of each metric (by step, then timestamp), as a server returns."""
    tags = [RunTag("mlflow.runName", run["name"] or "")]
    if run["parent"]:
        tags.append(RunTag("mlflow.parentRunId", run["parent"]))
    latest = [max(_points(key, points), key=lambda m: (m.step, m.timestamp))
              for key, points in run["metrics"].items() if points]
    info = RunInfo(
        run_id=run["run_id"], experiment_id=run["experiment_id"], user_id="fake",
        status=RUN_STATUS.get(run["status"], "SCHEDULED"), start_time=START_MS, end_time=None,
        lifecycle_stage="active", artifact_uri=f"azureml://artifacts/{run['run_id']}",
        run_name=run["name"],
    )
    return Run(info, RunData(metrics=latest, tags=tags))


def _points(key: str, points: list[tuple[int, float]]) -> list[Metric]:
    return [Metric(key, value, START_MS + 1000 * step, step) for step, value in points]


def _get_run(req: Recorded, experiments: Any, runs: dict[str, dict[str, Any]],
             max_page: int | None) -> dict[str, Any]:
    message = _message(req, GetRun())
    run = runs.get(message.run_id or message.run_uuid)
    if run is None:
        raise MlflowException(f"Run '{message.run_id}' not found", RESOURCE_DOES_NOT_EXIST)
    response = GetRun.Response()
    response.run.MergeFrom(run_entity(run).to_proto())
    return _json(response)


def _search_runs(req: Recorded, experiments: Any, runs: dict[str, dict[str, Any]],
                 max_page: int | None) -> dict[str, Any]:
    message = _message(req, SearchRuns())
    if message.max_results > 50000:
        raise MlflowException("max_results must be at most 50000", INVALID_PARAMETER_VALUE)
    _refuse_what_azure_refuses(message.filter)
    view = ViewType.from_proto(message.run_view_type) if message.HasField(
        "run_view_type") else ViewType.ACTIVE_ONLY
    wanted = set(message.experiment_ids)
    found = [run_entity(r) for r in runs.values() if r["experiment_id"] in wanted
             and view in (ViewType.ACTIVE_ONLY, ViewType.ALL)]
    found = SearchUtils.sort(SearchUtils.filter(found, message.filter), list(message.order_by))
    page, token = SearchUtils.paginate(found, message.page_token or None,
                                       _page_size(message.max_results, max_page))
    response = SearchRuns.Response()
    response.runs.extend([run.to_proto() for run in page])
    if token:
        response.next_page_token = token.decode()
    return _json(response)


def _refuse_what_azure_refuses(filter_string: str) -> None:
    for clause in SearchUtils.parse_search_filter(filter_string):
        kind, comparator = clause["type"], clause["comparator"].upper()
        if kind == "attribute" and clause["key"] in AZURE_ATTRIBUTES:
            continue
        if any(k in (None, kind) and c in (None, comparator) for k, c in AZURE_UNSUPPORTED):
            raise MlflowException(
                f"filter '{filter_string}': Azure ML's MLflow server does not support "
                f"{comparator} on {kind} {clause['key']!r}", INVALID_PARAMETER_VALUE)


def _page_size(asked: int | None, max_page: int | None) -> int:
    return min(asked, max_page) if asked and max_page else (asked or max_page or 0)


def _get_metric_history(req: Recorded, experiments: Any, runs: dict[str, dict[str, Any]],
                        max_page: int | None) -> dict[str, Any]:
    message = _message(req, GetMetricHistory())
    run = runs.get(message.run_id or message.run_uuid)
    if run is None:
        raise MlflowException(f"Run '{message.run_id}' not found", RESOURCE_DOES_NOT_EXIST)
    asked = message.max_results if message.HasField("max_results") else None
    if asked is not None and asked <= 0:
        raise MlflowException(f"Invalid value {asked} for parameter 'max_results'",
                              INVALID_PARAMETER_VALUE)
    points = sorted(_points(message.metric_key, run["metrics"].get(message.metric_key, [])),
                    key=lambda m: (m.timestamp, m.step, m.value))
    size = _page_size(asked, max_page)
    offset = SearchUtils.parse_start_offset_from_page_token(message.page_token or None)
    page = points[offset:offset + size] if size else points[offset:]
    response = GetMetricHistory.Response()
    response.metrics.extend([m.to_proto() for m in page])
    if size and offset + size < len(points):
        response.next_page_token = SearchUtils.create_page_token(offset + size).decode()
    return _json(response)
