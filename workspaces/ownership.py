"""Who owns a model version, an endpoint or a deployment: the request tag it was made with.

Every write that creates or changes one of them states the request it is made for; the
workspace compares that with the resource's tag at the moment of the write (locally under
the resource's lock, on Azure by a read just before the write) and refuses a foreign one.
"""

from __future__ import annotations

from workspaces.errors import OwnershipConflict
from workspaces.interface import (
    ROLLOUT_ACTIVE_STEPS,
    TAG_REQUEST,
    TAG_ROLLOUT_REQUEST,
    TAG_ROLLOUT_SINCE,
    TAG_ROLLOUT_STEP,
)


def owner_of(tags: dict[str, str]) -> str | None:
    """The request a resource was made for (None: made by hand, or not by this project)."""
    return tags.get(TAG_REQUEST) or None


def foreign(what: str, tags: dict[str, str], request_id: str | None) -> str | None:
    """Why ``what`` is not this request's to change, or None when it is (or no owner is
    stated: operator tools and benchmarks write without one)."""
    if request_id is None:
        return None
    owner = owner_of(tags)
    if owner == request_id:
        return None
    return f"{what} belongs to " + (f"request {owner}" if owner else "no request of ours")


def refuse_foreign(what: str, tags: dict[str, str], request_id: str | None, advice: str) -> None:
    """Raise :class:`OwnershipConflict` naming both requests when ``what`` is foreign."""
    problem = foreign(what, tags, request_id)
    if problem:
        raise OwnershipConflict(f"{problem} (this request is {request_id}); {advice}")


def refuse_foreign_model(
    name: str, version: str, tags: dict[str, str], request_id: str | None
) -> None:
    """Refuse a registered version another request made: its weights are not ours."""
    refuse_foreign(f"model {name} version {version}", tags, request_id,
                   "its weights are not this request's; nothing was registered")


ENDPOINT_ADVICE = (
    "choose another endpoint_name, or set take_over=true to take the endpoint over"
)


def rollout_under_way(tags: dict[str, str]) -> str | None:
    """The request whose rollout is under way on an endpoint with these tags, else None."""
    if tags.get(TAG_ROLLOUT_STEP) in ROLLOUT_ACTIVE_STEPS:
        return tags.get(TAG_ROLLOUT_REQUEST) or None
    return None


def claim_for_rollout(what: str, tags: dict[str, str], request_id: str) -> dict[str, str]:
    """The endpoint's tags once ``request_id`` has claimed it for a release.

    Refused while another request's rollout is under way: two releases onto one endpoint
    would route each other's deployments.
    """
    busy = rollout_under_way(tags)
    if busy and busy != request_id:
        raise OwnershipConflict(
            f"{what} is in the middle of a rollout of request {busy} (step "
            f"{tags.get(TAG_ROLLOUT_STEP)} since {tags.get(TAG_ROLLOUT_SINCE, 'unknown')}; "
            f"this request is {request_id}); wait for it to finish, or for the smoke test "
            "to undo it once it expires"
        )
    return {**tags, TAG_REQUEST: request_id}


def merge_tags(tags: dict[str, str], changes: dict[str, str] | None) -> dict[str, str]:
    """``tags`` with ``changes`` applied: an empty value removes the tag."""
    merged = dict(tags)
    for key, value in (changes or {}).items():
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    return merged
