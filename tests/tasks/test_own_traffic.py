"""Splitting Azure's unattributed request counts with the project's recorded requests."""

from datetime import UTC, datetime

from tasks.own_traffic import attribute_own_requests
from workspaces.interface import EndpointActivity

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def activity(total: int, **kw) -> EndpointActivity:
    return EndpointActivity(endpoint_name="e", start=NOW, end=NOW, callers_known=False,
                            total_requests=total, last_organic_request_at=NOW,
                            requests_by_caller={"unattributed": total} if total else {}, **kw)


def test_unattributed_requests_count_as_organic_until_split():
    assert activity(4).organic_requests == 4


def test_recorded_own_requests_are_taken_off():
    split = attribute_own_requests(activity(5), own=3)
    assert split.organic_requests == 2
    assert split.requests_by_caller == {"project (recorded)": 3, "organic": 2}


def test_only_own_traffic_leaves_no_organic_request():
    split = attribute_own_requests(activity(3), own=7)
    assert split.organic_requests == 0
    assert split.last_organic_request_at is None


def test_known_callers_and_unreadable_activity_are_left_alone():
    known = EndpointActivity(endpoint_name="e", start=NOW, end=NOW,
                             requests_by_caller={"organic": 1})
    assert attribute_own_requests(known, own=1) is known
    unreadable = activity(2, available=False)
    assert attribute_own_requests(unreadable, own=2) is unreadable
