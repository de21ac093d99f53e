"""The history of the releases on an endpoint: what each one did, when, on what figures, why.

Every end of a release (the fine-tune's rollout, a person's promote, abort or rollback, the
scheduled recovery) appends one :class:`ReleaseEvent`. The history is kept where the
endpoint's models live, never only in the Prefect server's database, so it outlives it:

- local: one MLflow run per event in the experiment ``releases/<endpoint>`` of the
  workspace's registry database, and the model version's ``chatft-last-release`` tag;
- Azure: a ring of the newest :data:`AZURE_RING` events in the endpoint's tags (a tag
  value holds 256 characters, so each event is two compact tags, its facts and its words,
  :func:`to_tags`), and the model version's ``chatft-last-release`` tag.

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
WORDS_SUFFIX = "-why"  # ``chatft-history-3-why``: the words of event slot 3
TAG_VALUE_LIMIT = 256


class ReleaseEvent(BaseModel):
    """One entry of an endpoint's release history."""

    # Microseconds kept: two events of one second still sort in the order they happened.
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
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


_FACTS = ("t", "a", "q", "m", "v", "d", "p", "u", "n")


def _fit(fields: dict[str, object], order: tuple[str, ...]) -> str:
    """``fields`` as compact JSON of at most 256 characters: the text fields named in
    ``order`` are shortened (then dropped) one after the other until it fits."""
    for key in order:
        text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
        over = len(text) - TAG_VALUE_LIMIT
        if over <= 0:
            return text
        value = fields.get(key)
        if isinstance(value, str) and len(value) - over - 1 >= 30:
            fields[key] = value[:len(value) - over - 1] + "…"
        else:
            fields.pop(key, None)
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[:TAG_VALUE_LIMIT]


def to_tags(event: ReleaseEvent) -> tuple[str, str]:
    """The event as two tag values of at most 256 characters each: its facts (time,
    action, request, model, deployment, what served before, run) and its words (reason,
    who asked, figures). The run is kept as its id; of the words, the figures go first,
    then the reason is shortened (its start, the person's words, stays), the actor last."""
    data = event.model_dump(mode="json", exclude={"endpoint"})
    data["run"] = _run_id(data["run"])
    compact = {_SHORT[key]: value for key, value in data.items() if value not in ("", {}, None)}
    facts = {k: v for k, v in compact.items() if k in _FACTS}
    words = {k: v for k, v in compact.items() if k not in _FACTS}
    return _fit(facts, ("p", "q", "d")), _fit(words, ("f", "r", "b"))


def _run_id(run: str) -> str:
    """``name (id)`` as the id alone (what finds the run on the server)."""
    return run[run.rindex("(") + 1:-1] if run.endswith(")") and "(" in run else run


def from_tags(endpoint: str, facts: str, words: str = "") -> ReleaseEvent | None:
    """The event two tag values hold (None when they hold none)."""
    try:
        data = {**json.loads(words or "{}"), **json.loads(facts)}
        return ReleaseEvent(endpoint=endpoint, **{_LONG[k]: v for k, v in data.items()
                                                   if k in _LONG})
    except (ValueError, TypeError):
        return None


def ring_from_tags(endpoint: str, tags: dict[str, str]) -> list[ReleaseEvent]:
    """The events of an endpoint's tag ring, newest first."""
    slots = [key for key in tags if key.startswith(HISTORY_TAG_PREFIX)
             and not key.endswith(WORDS_SUFFIX)]
    events = [from_tags(endpoint, tags[key], tags.get(key + WORDS_SUFFIX, ""))
              for key in slots]
    return newest_first([e for e in events if e is not None])


def ring_tags(tags: dict[str, str], event: ReleaseEvent) -> dict[str, str]:
    """The two tags that add ``event`` to the ring in ``tags`` (the oldest slot reused)."""
    ring = ring_from_tags(event.endpoint, tags)
    seq = (ring[0].seq + 1) if ring else 1
    facts, words = to_tags(event.model_copy(update={"seq": seq}))
    slot = f"{HISTORY_TAG_PREFIX}{seq % AZURE_RING}"
    return {slot: facts, slot + WORDS_SUFFIX: words}


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
