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


def read_activity(
    client: MetricsClient, endpoint_arm_id: str, endpoint_name: str, start: datetime, end: datetime
) -> EndpointActivity:
    """Requests per deployment in [start, end); available=False when metrics can't be read."""
    try:
        results = client.query_resources(
            resource_ids=[endpoint_arm_id],
            metric_namespace=NAMESPACE,
            metric_names=[METRIC],
            timespan=(start, end),
            granularity=timedelta(minutes=1),
            aggregations=["Total"],
            filter="deployment eq '*'",
        )
    except AzureError as exc:
        return EndpointActivity.unreadable(
            endpoint_name, start, end,
            f"Azure Monitor metrics could not be read: {scrub(str(exc).splitlines()[0])}",
        )
    return _summarise(results, endpoint_name, start, end)


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
