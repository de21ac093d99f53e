"""The history of the releases on an endpoint: what each one did, when, on what figures, why.

Every end of a release (the fine-tune's rollout, a person's promote, abort or rollback, the
scheduled recovery) appends one :class:`ReleaseEvent`. The history is kept where the
endpoint's models live, never only in the Prefect server's database, so it outlives it:

- local: one MLflow run per event in the experiment ``releases/<endpoint>`` of the
  workspace's registry database, and the model version's ``chatft-last-release`` tag;
- Azure: a ring of the newest :data:`AZURE_RING` events in the endpoint's tags (a tag
  value holds 256 characters, so each event is written compactly, :func:`to_tag`), and the
  model version's ``chatft-last-release`` tag.

Reading it back (``Workspace.release_history``) rebuilds the same table either way.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal, get_args

from pydantic import BaseModel, Field

ReleaseAction = Literal[
    "first-release",  # the endpoint was made and the model took all traffic
    "promoted",       # a new model took 100 % after its canary (or a person promoted it)
    "held",           # a canary kept at its share for a person, or stopped by a hand change
    "rejected",       # the gate refused the model; the endpoint was not touched
    "canary-failed",  # the contract or the watch failed; the new model was withdrawn
    "undone",         # the run releasing died; the recovery put back what served
    "aborted",        # a person withdrew a canary or a held release
    "rolled-back",    # a person put an earlier model version back in production
]
ACTIONS: tuple[str, ...] = get_args(ReleaseAction)
# The actions after which a version is the endpoint's production model.
TOOK_PRODUCTION: frozenset[str] = frozenset({"first-release", "promoted", "rolled-back"})
# Model version tag: the last event that concerned the version, as JSON.
TAG_LAST_RELEASE = "chatft-last-release"
# Azure: the ring of events in the endpoint's tags (``chatft-history-0`` ... ``-9``).
AZURE_RING = 10
HISTORY_TAG_PREFIX = "chatft-history-"
TAG_VALUE_LIMIT = 256


class ReleaseEvent(BaseModel):
    """One entry of an endpoint's release history."""

    at: datetime = Field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    endpoint: str
    action: ReleaseAction
    request: str = Field("", description="The request (or rollback) the release was for")
    model: str = ""
    version: str = ""
    deployment: str = ""
    previous: str = Field("", description="What served production before (model:version)")
    reason: str = ""
    figures: dict[str, str] = Field(default_factory=dict,
                                    description="Gate and watch figures, by short name")
    run: str = Field("", description="The flow run that did it")
    actor: str = Field("", description="Who asked: the Prefect user or client, or the shell")
    seq: int = Field(0, description="Azure: the event's number in the endpoint's ring")

    @property
    def model_version(self) -> str:
        """``name:version``, or "" when the event names no model."""
        return f"{self.model}:{self.version}" if self.model and self.version else ""


def newest_first(events: list[ReleaseEvent]) -> list[ReleaseEvent]:
    """The events, newest first (ties by their ring number)."""
    return sorted(events, key=lambda e: (e.at, e.seq), reverse=True)


# Short keys, so that an event with its figures fits one Azure tag value.
_SHORT = {"at": "t", "action": "a", "request": "q", "model": "m", "version": "v",
          "deployment": "d", "previous": "p", "reason": "r", "figures": "f", "run": "u",
          "actor": "b", "seq": "n"}
_LONG = {short: name for name, short in _SHORT.items()}


def to_tag(event: ReleaseEvent) -> str:
    """The event as one tag value of at most 256 characters: the reason is shortened
    first, then the figures and the actor, never the facts (time, action, model, run)."""
    data = event.model_dump(mode="json", exclude={"endpoint"})
    compact = {_SHORT[key]: value for key, value in data.items() if value not in ("", {}, None)}
    for drop in ("r", "f", "b", "p"):
        text = json.dumps(compact, separators=(",", ":"), ensure_ascii=False)
        if len(text) <= TAG_VALUE_LIMIT:
            return text
        if drop == "r" and compact.get("r"):
            room = len(compact["r"]) - (len(text) - TAG_VALUE_LIMIT) - 1
            if room >= 20:
                compact["r"] = compact["r"][:room] + "…"
                continue
        compact.pop(drop, None)
    return json.dumps(compact, separators=(",", ":"), ensure_ascii=False)[:TAG_VALUE_LIMIT]


def from_tag(endpoint: str, text: str) -> ReleaseEvent | None:
    """The event a tag value holds (None when it holds none)."""
    try:
        data = json.loads(text)
        return ReleaseEvent(endpoint=endpoint, **{_LONG[k]: v for k, v in data.items()
                                                   if k in _LONG})
    except (ValueError, TypeError):
        return None


def ring_from_tags(endpoint: str, tags: dict[str, str]) -> list[ReleaseEvent]:
    """The events of an endpoint's tag ring, newest first."""
    events = [from_tag(endpoint, value) for key, value in tags.items()
              if key.startswith(HISTORY_TAG_PREFIX)]
    return newest_first([e for e in events if e is not None])


def ring_tags(tags: dict[str, str], event: ReleaseEvent) -> dict[str, str]:
    """The one tag that adds ``event`` to the ring in ``tags`` (the oldest slot reused)."""
    ring = ring_from_tags(event.endpoint, tags)
    seq = (ring[0].seq + 1) if ring else 1
    numbered = event.model_copy(update={"seq": seq})
    return {f"{HISTORY_TAG_PREFIX}{seq % AZURE_RING}": to_tag(numbered)}


def history_rows(events: list[ReleaseEvent]) -> list[dict[str, str]]:
    """The history as table rows, newest first: the artifact's and the shell's table."""
    return [{"when (UTC)": e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
             "action": e.action, "model": e.model_version or "-",
             "deployment": e.deployment or "-", "before": e.previous or "-",
             "figures": ", ".join(f"{k} {v}" for k, v in sorted(e.figures.items())) or "-",
             "reason": e.reason or "-", "run": e.run or "-", "asked by": e.actor or "-",
             "request": e.request or "-"}
            for e in newest_first(events)]


def history_table(events: list[ReleaseEvent]) -> str:
    """The history as a markdown table, newest first, for a shell."""
    rows = history_rows(events)
    if not rows:
        return "No release is recorded on this endpoint."
    head = "| " + " | ".join(rows[0]) + " |\n" + "|---" * len(rows[0]) + "|\n"
    return head + "\n".join("| " + " | ".join(
        v.replace("|", "/").replace("\n", " ") for v in row.values()) + " |" for row in rows)
