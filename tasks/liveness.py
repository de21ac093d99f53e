"""Whether the flow run that moves a release is alive, asked of the Prefect server.

A release records its flow run on the endpoint (``chatft-rollout-run``). While it holds
the endpoint, the run sends a heartbeat event (``chatft.release.heartbeat``) every
:func:`heartbeat_seconds`. The scheduled recovery settles a release only when its run is
over: in a final state on the server, or silent (no heartbeat, Prefect's own flow-run
heartbeat included) for longer than :func:`liveness_bound_s`, measured on the server's
clock (the ``received`` time the server stamps on each event, against the ``Date`` of its
answer), so a clock that jumps on the worker or on the machine of the recovery cannot
make a live run look dead.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events import emit_event
from pydantic import BaseModel

from workspaces.release_state import parse_time

HEARTBEAT_EVENT = "chatft.release.heartbeat"
HEARTBEAT_ENV = "CHATFT_RELEASE_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_S = 30.0


def heartbeat_seconds() -> float:
    """How often a release's run says it is alive (``CHATFT_RELEASE_HEARTBEAT_SECONDS``)."""
    try:
        value = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    except ValueError:
        value = DEFAULT_HEARTBEAT_S
    return max(1.0, value)


def liveness_bound_s() -> float:
    """Silence after which a run not in a final state is taken for dead: four missed
    heartbeats, and time for the server to store the last one."""
    return 4 * heartbeat_seconds() + 15


def _beat(run_id: str) -> None:
    emit_event(event=HEARTBEAT_EVENT,
               resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"})


@contextmanager
def release_heartbeat(run_id: str) -> Iterator[None]:
    """Send heartbeats for ``run_id`` from a daemon thread while the block runs: a kill -9
    stops them with the process, which is what the recovery watches for."""
    stop = threading.Event()
    context = contextvars.copy_context()  # the run's Prefect settings and client

    def loop() -> None:
        while not stop.is_set():
            try:
                _beat(run_id)
            except Exception:  # noqa: BLE001, S110 - a missed beat only delays nothing
                pass
            stop.wait(heartbeat_seconds())

    thread = threading.Thread(target=context.run, args=(loop,), daemon=True,
                              name="chatft-release-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


class RunLiveness(BaseModel):
    """What the server says of the run that moves a release."""

    alive: bool
    why: str


def run_liveness(run_id: str | None, since: datetime | None) -> RunLiveness:
    """Whether the run ``run_id`` (recorded on the endpoint ``since``) still moves its release.

    A run the server does not know (recorded by another server, or a database since lost)
    is judged by the release's own record: silent once ``since`` is older than the bound.
    """
    bound = liveness_bound_s()
    try:
        flow_run_id = UUID(run_id or "")
    except ValueError:
        flow_run_id = None
    with get_client(sync_client=True) as client:
        run = None
        if flow_run_id is not None:
            try:
                run = client.read_flow_run(flow_run_id)
            except Exception:  # noqa: BLE001 - not found: judged on the record below
                run = None
        if run is not None and run.state is not None and run.state.is_final():
            return RunLiveness(alive=False,
                               why=f"its run {run.name} ended {run.state.name}")
        response = client.request("POST", "/events/filter", json={
            "filter": {
                "event": {"name": [HEARTBEAT_EVENT, "prefect.flow-run.heartbeat"]},
                "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                "order": "DESC",
            },
            "limit": 1,
        })
    # A proxy that drops the Date header leaves only this machine's clock to go by.
    date = response.headers.get("date")
    server_now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    events = response.json().get("events") or []
    last = parse_time(events[0].get("received") or events[0]["occurred"]) if events else None
    if last is None:
        last = max((t for t in (since, run.start_time if run else None) if t is not None),
                   default=None)
    name = run.name if run is not None else f"{run_id} (not on this server)"
    if last is None:
        return RunLiveness(alive=False, why=f"its run {name} left no sign of life")
    silent = (server_now - last).total_seconds()
    if silent > bound:
        return RunLiveness(alive=False, why=f"its run {name} has been silent for "
                           f"{silent:.0f} s (more than {bound:.0f} s)")
    return RunLiveness(alive=True, why=f"its run {name} is alive (last heard {silent:.0f} s "
                       "ago)")
