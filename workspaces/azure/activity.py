"""Endpoint activity from Azure Monitor platform metrics (``RequestsPerMinute`` by deployment).

Azure Monitor counts requests but cannot see request headers, so it cannot tell this
project's own scoring calls (``CALLER_HEADER``) from real use: requests come back
``unattributed`` (``callers_known=False``). They count as organic unless the caller
subtracts the requests the project recorded as its own (``tasks.own_traffic``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError
from azure.monitor.querymetrics import MetricsClient

from workspaces.azure.errors import scrub
from workspaces.interface import EndpointActivity

NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
METRIC = "RequestsPerMinute"
CALLER_NOTE = (
    "Azure Monitor metrics cannot tell this project's requests from others; "
    "requests are unattributed"
)


# Azure Monitor's batch query takes at most 50 resource ids, of one region and one
# resource type, per call (all endpoints of one workspace share both).
BATCH_SIZE = 50


def read_activity(
    client: MetricsClient, endpoint_arm_id: str, endpoint_name: str, start: datetime, end: datetime
) -> EndpointActivity:
    """Requests per deployment in [start, end); available=False when metrics can't be read."""
    return read_activities(client, {endpoint_name: endpoint_arm_id}, start, end)[endpoint_name]


def read_activities(
    client: MetricsClient, arm_ids: dict[str, str], start: datetime, end: datetime
) -> dict[str, EndpointActivity]:
    """Activity of every endpoint (name -> ARM id), one ``query_resources`` call per 50."""
    names = list(arm_ids)
    found: dict[str, EndpointActivity] = {}
    for first in range(0, len(names), BATCH_SIZE):
        batch = names[first:first + BATCH_SIZE]
        found.update(_read_batch(client, {n: arm_ids[n] for n in batch}, start, end))
    return found


def _read_batch(
    client: MetricsClient, arm_ids: dict[str, str], start: datetime, end: datetime
) -> dict[str, EndpointActivity]:
    try:
        results = client.query_resources(
            resource_ids=list(arm_ids.values()),
            metric_namespace=NAMESPACE,
            metric_names=[METRIC],
            timespan=(start, end),
            granularity=timedelta(minutes=1),
            aggregations=["Total"],
            filter="deployment eq '*'",
        )
    except AzureError as exc:
        reason = f"Azure Monitor metrics could not be read: {scrub(str(exc).splitlines()[0])}"
        return {name: EndpointActivity.unreadable(name, start, end, reason) for name in arm_ids}
    # A result names its resource only through its metrics' ids
    # ("<resource id>/providers/Microsoft.Insights/metrics/<metric>"); match on that, not
    # on the order, and never guess: an endpoint without its own result is unreadable.
    by_id = {arm_id.lower(): name for name, arm_id in arm_ids.items()}
    per_endpoint: dict[str, list[Any]] = {}
    for result in results:
        owner = next((by_id.get(_resource_of(m.id)) for m in result.metrics
                      if _resource_of(m.id) in by_id), None)
        if owner is not None:
            per_endpoint.setdefault(owner, []).append(result)
    return {
        name: _summarise(per_endpoint[name], name, start, end) if name in per_endpoint
        else EndpointActivity.unreadable(
            name, start, end, "Azure Monitor returned no metrics for this endpoint")
        for name in arm_ids
    }


def _resource_of(metric_id: str | None) -> str:
    return (metric_id or "").lower().split("/providers/microsoft.insights/", 1)[0]


def _summarise(
    results: list[Any], endpoint_name: str, start: datetime, end: datetime
) -> EndpointActivity:
    by_deployment: dict[str, int] = {}
    last: datetime | None = None
    for result in results:
        for metric in result.metrics:
            for series in metric.timeseries:
                deployment = series.metadata_values.get("deployment") or "(none)"
                for point in series.data:
                    count = int(round(point.total or 0))
                    if count <= 0:
                        continue
                    by_deployment[deployment] = by_deployment.get(deployment, 0) + count
                    if last is None or point.timestamp > last:
                        last = point.timestamp
    total = sum(by_deployment.values())
    return EndpointActivity(
        endpoint_name=endpoint_name,
        start=start,
        end=end,
        available=True,
        reason=CALLER_NOTE,
        total_requests=total,
        callers_known=False,
        requests_by_caller={"unattributed": total} if total else {},
        requests_by_deployment=by_deployment,
        last_request_at=last,
        last_organic_request_at=last,
    )
