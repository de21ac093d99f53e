"""The project's own scoring requests, recorded as Prefect events and counted back.

Local endpoints log the caller marker of every request, so they tell the project's own
traffic from real use by themselves. Azure Monitor cannot see headers: its request counts
are unattributed. So every flow that scores an endpoint records how many requests it sent
(event ``chatft.own-requests``), and the teardown flow subtracts those from Azure's counts
before it calls an endpoint idle.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tasks import reports
from workspaces.interface import EndpointActivity

OWN_REQUESTS_EVENT = f"{reports.EVENT_PREFIX}.own-requests"
# Azure Monitor publishes a minute's requests a few minutes late; recorded requests newer
# than this are not subtracted, so a real request in that gap is never hidden.
METRICS_LAG = timedelta(minutes=5)


def record_own_requests(endpoint_name: str, workspace_kind: str, caller: str, count: int) -> None:
    """Record that a flow of this project sent ``count`` scoring requests to an endpoint."""
    if count > 0:
        reports.emit("own-requests", endpoint_name, workspace_kind,
                     {"caller": caller, "requests": count})


def count_own_requests_by_endpoint(
    endpoint_names: list[str], workspace_kind: str, start: datetime, end: datetime
) -> dict[str, int]:
    """Recorded own requests in [start, end - lag) per endpoint, read in one paged query."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    totals = dict.fromkeys(endpoint_names, 0)
    until = end - METRICS_LAG
    if until <= start or not endpoint_names:
        return totals
    by_resource = {f"{reports.EVENT_PREFIX}.endpoint.{name}": name for name in endpoint_names}
    event_filter = EventFilter(
        event=EventNameFilter(name=[OWN_REQUESTS_EVENT]),
        occurred=EventOccurredFilter(since=start, until=until),
        resource=EventResourceFilter(
            id=list(by_resource), labels={"chatft.workspace": [workspace_kind]},
        ),
    )
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=event_filter, limit=50)
        while True:
            for event in page.events:
                name = by_resource.get(event.resource.id)
                if name is not None:
                    totals[name] += int(event.payload.get("requests", 0))
            if not page.next_page:
                return totals
            page = client.read_events_page(page.next_page)


def attribute_own_requests(activity: EndpointActivity, own: int) -> EndpointActivity:
    """Split unattributed requests into the project's own (recorded) and organic."""
    if activity.callers_known or not activity.available:
        return activity
    unattributed = activity.requests_by_caller.get("unattributed", 0)
    mine = min(own, unattributed)
    callers = {k: v for k, v in activity.requests_by_caller.items() if k != "unattributed"}
    if mine:
        callers["project (recorded)"] = mine
    if unattributed - mine:
        callers["organic"] = unattributed - mine
    return activity.model_copy(update={
        "requests_by_caller": callers,
        "callers_known": True,
        "last_organic_request_at": activity.last_organic_request_at if unattributed - mine
        else None,
        "reason": f"{activity.reason or ''}; {mine} request(s) recorded as the project's own "
                  "were subtracted".lstrip("; "),
    })
