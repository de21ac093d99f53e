"""Who owns a model version, an endpoint or a deployment: the request tag it was made with.

Every write that creates or changes one of them states the request it is made for; the
workspace compares that with the resource's tag at the moment of the write (locally under
the resource's lock, on Azure by a read just before the write) and refuses a foreign one.
"""

from __future__ import annotations

from workspaces.errors import ConcurrentChange, OwnershipConflict
from workspaces.interface import TAG_REQUEST, TAG_ROLLOUT_SINCE, TAG_ROLLOUT_STEP
from workspaces.release_state import RecordedRelease, live_shares


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
    """The request whose release is under way or held on an endpoint with these tags."""
    recorded = RecordedRelease.of(tags)
    return recorded.request if recorded.occupied else None


def claim_for_rollout(what: str, tags: dict[str, str], request_id: str) -> dict[str, str]:
    """The endpoint's tags once ``request_id`` has claimed it for a release.

    Refused while another request's release is under way or held: two releases onto one
    endpoint would route each other's deployments, and a held canary belongs to a person.
    """
    busy = rollout_under_way(tags)
    if busy and busy != request_id:
        step = tags.get(TAG_ROLLOUT_STEP)
        raise OwnershipConflict(
            f"{what} {'holds' if step == 'held' else 'is in the middle of'} a release of "
            f"request {busy} (step {step} since {tags.get(TAG_ROLLOUT_SINCE, 'unknown')}; "
            f"this request is {request_id}); "
            + ("promote or abort it first (docs/rollout.md, 'How a release ends')"
               if step == "held" else
               "wait for it to finish; if its run died, the next scheduled smoke test "
               "settles it")
        )
    return {**tags, TAG_REQUEST: request_id}


def refuse_take_over(what: str, tags: dict[str, str]) -> None:
    """Refuse to take over an endpoint that releases go onto: taking it over would put a
    model on live traffic without the gate, and orphan a release in progress."""
    recorded = RecordedRelease.of(tags)
    if recorded.step is None:
        return
    state = ("a release is under way or held on it (step " + recorded.step + ")"
             if recorded.occupied else "its models are released through the gate")
    raise OwnershipConflict(
        f"{what} cannot be taken over: {state}. Release onto it with rollout.strategy "
        "canary (the gate compares your model with the one that serves), or choose "
        "another endpoint_name"
    )


def check_expected(
    what: str, tags: dict[str, str], traffic: dict[str, int],
    expect: dict[str, str] | None, expect_traffic: dict[str, int] | None,
) -> None:
    """Raise :class:`ConcurrentChange` when the endpoint is not as its writer last saw it."""
    changed = [f"tag {key} is {tags.get(key, '') or 'unset'!r}, expected {value or 'unset'!r}"
               for key, value in (expect or {}).items() if tags.get(key, "") != value]
    if expect_traffic is not None:
        live, wanted = live_shares(traffic), live_shares(expect_traffic)
        if live != wanted:
            changed.append(f"traffic is {live or 'none'}, expected {wanted or 'none'}")
    if changed:
        raise ConcurrentChange(f"{what} changed under this write: " + "; ".join(changed))


def merge_tags(tags: dict[str, str], changes: dict[str, str] | None) -> dict[str, str]:
    """``tags`` with ``changes`` applied: an empty value removes the tag."""
    merged = dict(tags)
    for key, value in (changes or {}).items():
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    return merged
