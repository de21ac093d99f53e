"""The deployments of prefect.yaml on a server: what is deployed, and checks of it.

After ``up`` deploys them, each deployment is made to refuse a run with a parameter its
flow does not take, and ``verify`` asks the server whether it does; ``next_runs`` says
when each schedule first fires, as the server's scheduler sees it.
"""

from __future__ import annotations

import asyncio
import urllib.error
from datetime import UTC, datetime
from pathlib import Path

import yaml

from blocks import alerts
from server.api import api
from server.instance import Server


def deployments_in(project_dir: Path) -> list[dict]:
    """The deployments of prefect.yaml, each with ``present`` = its flow file exists."""
    config = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    found = []
    for deployment in config.get("deployments") or []:
        path = deployment["entrypoint"].split(":", 1)[0]
        found.append({**deployment, "present": (project_dir / path).exists()})
    return found


def refuse_unknown_parameters(server: Server, deployment: dict) -> None:
    """Make the server refuse a run whose parameters hold a name the flow does not take.

    Prefect builds the schema from the flow's signature without ``additionalProperties``,
    so ``{"dry_run": true}`` (a field of ``request``, misplaced) would be accepted and
    fail only when the run starts. The request models refuse unknown fields themselves.
    """
    found = api(server, "GET", f"/deployments/name/{full_name(deployment)}")
    schema = dict(found["parameter_openapi_schema"] or {})
    if schema.get("properties") and schema.get("additionalProperties") is not False:
        schema["additionalProperties"] = False
        api(server, "PATCH", f"/deployments/{found['id']}",
            {"parameter_openapi_schema": schema})


# A parameter no flow takes: a run asked with it must be refused (409) by the server.
UNKNOWN_PARAMETER_PROBE = {"chatft_up_check_unknown_parameter": True}


def full_name(deployment: dict) -> str:
    """``<flow name>/<deployment name>`` of a prefect.yaml deployment."""
    flow_name = deployment["entrypoint"].rsplit(":", 1)[1].replace("_", "-")
    return f"{flow_name}/{deployment['name']}"


def deployment_id(server: Server, deployment: dict) -> str:
    """The server's id of a prefect.yaml deployment."""
    return api(server, "GET", f"/deployments/name/{full_name(deployment)}")["id"]


def refuses_unknown_parameters(server: Server, deployment: dict) -> bool:
    """Ask the server for a run with an unknown parameter: True when it refuses (409).

    A run it accepted is deleted at once (it could only fail), so the check leaves nothing.
    """
    found = deployment_id(server, deployment)
    try:
        run = api(server, "POST", f"/deployments/{found}/create_flow_run",
                  {"parameters": UNKNOWN_PARAMETER_PROBE})
    except urllib.error.HTTPError as refused:
        if refused.code == 409:
            return True
        raise
    api(server, "DELETE", f"/flow_runs/{run['id']}")
    return False


def verify(server: Server, deployed: list[dict]) -> list[str]:
    """What a person relies on after ``up``, checked against the server itself.

    Each deployment refuses unknown parameters (repaired once if not: an earlier ``up``
    may have died between deploy and PATCH), and the notification automation exists once.
    Raises RuntimeError naming what is still wrong; returns the lines to print.
    """
    lines = []
    for deployment in deployed:
        if not refuses_unknown_parameters(server, deployment):
            refuse_unknown_parameters(server, deployment)
            if not refuses_unknown_parameters(server, deployment):
                raise RuntimeError(
                    f"deployment {deployment['name']} still accepts unknown parameters; "
                    f"see {server.log_file('server')}")
    if deployed:
        lines.append("Checked: " + ", ".join(d["name"] for d in deployed)
                     + " refuse a run with an unknown parameter (409)")
    automations = [a for a in api(server, "POST", "/automations/filter", {}) or []
                   if a["name"] == alerts.AUTOMATION_NAME]
    if len(automations) != 1:
        raise RuntimeError(f"expected one automation {alerts.AUTOMATION_NAME!r}, "
                           f"found {len(automations)}")
    state = "enabled" if automations[0]["enabled"] else (
        f"disabled until block custom-webhook/{alerts.BLOCK_NAME} has a URL")
    lines.append(f"Checked: automation {alerts.AUTOMATION_NAME!r} exists ({state})")
    return lines


def next_runs(server: Server, deployed: list[dict], now: datetime | None = None) -> list[str]:
    """When each active schedule of the deployments first fires, as the scheduler sees it.

    The dates come from the server's own schedule classes over the schedules the server
    holds, so a schedule edited in the UI is reported as edited.
    """
    from prefect.server.schemas.schedules import SCHEDULE_TYPES
    from pydantic import TypeAdapter

    now = now or datetime.now(UTC)
    parse = TypeAdapter(SCHEDULE_TYPES).validate_python
    lines = []
    for deployment in deployed:
        found = api(server, "GET", f"/deployments/name/{full_name(deployment)}")
        if found.get("paused"):
            lines.append(f"{deployment['name']}: paused")
            continue
        dates = []
        for entry in found.get("schedules") or []:
            if entry.get("active"):
                dates += asyncio.run(parse(entry["schedule"]).get_dates(n=1, start=now))
        if not dates:
            lines.append(f"{deployment['name']}: no schedule (start it from the UI)")
            continue
        first = min(dates).astimezone(UTC)
        minutes = max(0, round((first - now).total_seconds() / 60))
        lines.append(f"{deployment['name']}: first scheduled run at "
                     f"{first:%Y-%m-%d %H:%M} UTC (in {minutes} min)")
    return lines
