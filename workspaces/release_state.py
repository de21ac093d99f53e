"""The state of a release on an endpoint: its steps, the moves between them, who holds it.

A release (flows/rollout.py) keeps its state on the endpoint it releases onto, in tags
written in the same request as the traffic they describe. This module is the one home of
that vocabulary: the steps (:data:`RolloutStep`), which step may follow which
(:data:`TRANSITIONS`), the tags, and how they are read back (:class:`RecordedRelease`).
The release, its resume by a re-run and the scheduled recovery all move through it
(``tasks.rollout.record_step``), and the workspaces check it at every write
(:func:`workspaces.ownership.claim_for_rollout`), so no driver can take a step the others
do not know.

It lives with the workspaces because the writes themselves enforce it: a claim is refused
under the endpoint's lock (local) or on the read just before the write (Azure).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, get_args

from pydantic import BaseModel

from workspaces.interface import (
    TAG_ROLLOUT_ENDING,
    TAG_ROLLOUT_FROM,
    TAG_ROLLOUT_KEEP_PREVIOUS,
    TAG_ROLLOUT_REASON,
    TAG_ROLLOUT_REQUEST,
    TAG_ROLLOUT_REUSED,
    TAG_ROLLOUT_RUN,
    TAG_ROLLOUT_SINCE,
    TAG_ROLLOUT_STEP,
    TAG_ROLLOUT_TO,
)

RolloutStep = Literal[
    "deploying",    # claimed; the new deployment is made at 0 %
    "mirror",       # Azure: a mirrored share goes to the new deployment
    "canary",       # the new deployment takes its canary share, under watch
    "held",         # a person owns it: a healthy canary kept at its share, or a hand change
    "promoted",     # the new deployment takes 100 %; the old one is still to delete
    "rolled-back",  # the old deployment takes 100 % again; the new one is still to delete
    "done",         # released: one deployment serves the new model
    "undone",       # not released: what served before serves again
]
STEPS: tuple[str, ...] = get_args(RolloutStep)
# Work is left on the endpoint and a run (or the recovery, once the run is dead) does it.
UNDER_WAY: frozenset[str] = frozenset(
    {"deploying", "mirror", "canary", "promoted", "rolled-back"})
# The endpoint belongs to the release: no other request's write lands on it.
OCCUPIED: frozenset[str] = UNDER_WAY | {"held"}
FINAL: frozenset[str] = frozenset({"done", "undone"})
# How the recovery's reason starts when it undoes a release because its run died (not
# because the model failed): a re-run of the same request then tries again.
RUN_DIED = "the run releasing"
# A person's rollback to an earlier model version releases under a request id of its own
# that starts so (flows/release_control.py); its model is a known one, never rejected.
ROLLBACK_PREFIX = "rollback-"

# Which step may follow which. A claim starts from nothing, a finished release, or (the
# same request only) its own recorded step; the recovery takes the same moves as a run.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"deploying"}),
    "done": frozenset({"deploying"}),
    "undone": frozenset({"deploying"}),
    "deploying": frozenset({"deploying", "mirror", "canary", "promoted", "rolled-back",
                            "undone", "held"}),
    # A re-run of the same request takes its own mirror or canary back to deploying (all
    # live traffic to the old deployment) and tries again from the contract.
    "mirror": frozenset({"deploying", "mirror", "canary", "rolled-back", "held"}),
    "canary": frozenset({"deploying", "canary", "held", "promoted", "rolled-back"}),
    "held": frozenset({"held", "promoted", "rolled-back"}),
    "promoted": frozenset({"promoted", "done"}),
    "rolled-back": frozenset({"rolled-back", "undone"}),
}


def allowed(before: str | None, after: str) -> bool:
    """Whether a release recorded at ``before`` may move to ``after``."""
    return after in TRANSITIONS.get(before, frozenset())


class RecordedRelease(BaseModel):
    """A release as the endpoint's tags record it."""

    request: str | None = None
    step: str | None = None
    from_deployment: str | None = None
    to_deployment: str | None = None
    run: str | None = None
    since: datetime | None = None
    reason: str = ""
    keep_previous: bool = False
    ending: str = ""
    reused: bool = False

    @classmethod
    def of(cls, tags: dict[str, str]) -> RecordedRelease:
        """Read the release recorded in an endpoint's tags (all None: never released)."""
        return cls(
            request=tags.get(TAG_ROLLOUT_REQUEST) or None,
            step=tags.get(TAG_ROLLOUT_STEP) or None,
            from_deployment=tags.get(TAG_ROLLOUT_FROM) or None,
            to_deployment=tags.get(TAG_ROLLOUT_TO) or None,
            run=tags.get(TAG_ROLLOUT_RUN) or None,
            since=parse_time(tags.get(TAG_ROLLOUT_SINCE, "")),
            reason=tags.get(TAG_ROLLOUT_REASON, ""),
            keep_previous=tags.get(TAG_ROLLOUT_KEEP_PREVIOUS) == "true",
            ending=tags.get(TAG_ROLLOUT_ENDING, ""),
            reused=tags.get(TAG_ROLLOUT_REUSED) == "true",
        )

    @property
    def occupied(self) -> bool:
        """Whether the endpoint belongs to this release (under way or held)."""
        return self.step in OCCUPIED

    def production(self) -> str | None:
        """The deployment that serves production as the release records it: the one a
        release under way or held started from, the new one once done, the old one once
        undone (None: the record does not say)."""
        if self.step in OCCUPIED - {"promoted"} or self.step == "undone":
            return self.from_deployment
        if self.step in ("promoted", "done"):
            return self.to_deployment
        return None


def live_shares(traffic: dict[str, int]) -> dict[str, int]:
    """The deployments that take live traffic, with their shares (0 % ones left out)."""
    return {name: share for name, share in traffic.items() if share}


def release_tags(
    request_id: str, step: RolloutStep, old: str | None, new: str, run: str,
    keep_previous: bool = False, reason: str = "", ending: str = "", reused: bool = False,
) -> dict[str, str]:
    """The endpoint tags recording a release at ``step`` (an empty value removes a tag)."""
    if step not in STEPS:
        raise ValueError(f"unknown release step {step!r}; steps: {', '.join(STEPS)}")
    return {
        TAG_ROLLOUT_KEEP_PREVIOUS: "true" if keep_previous else "",
        TAG_ROLLOUT_REQUEST: request_id,
        TAG_ROLLOUT_STEP: step,
        TAG_ROLLOUT_FROM: old or "",
        TAG_ROLLOUT_TO: new,
        TAG_ROLLOUT_RUN: run,
        TAG_ROLLOUT_SINCE: datetime.now(UTC).isoformat(timespec="seconds"),
        # Azure caps a tag value at 256 characters.
        TAG_ROLLOUT_REASON: reason[:250],
        TAG_ROLLOUT_ENDING: ending,
        TAG_ROLLOUT_REUSED: "true" if reused else "",
    }


def parse_time(text: str) -> datetime | None:
    """An ISO time from a tag (UTC when it names no zone), None when it is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
