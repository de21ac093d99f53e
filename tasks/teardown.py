"""Clean-up steps of ``teardown_idle_endpoints``: list, read activity, delete, price, report.

Every task here reads live workspace state or changes it, so none is cached: a cached
listing or activity reading would let a re-run delete an endpoint on stale evidence.
Retries are for transient faults only (throttling, 5xx, timeouts).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.endpoints import DELETE_POLL_MAX_DELAY_S
from tasks.policies import transient_retries
from tasks.waiting import poll_until
from workspaces.errors import ResourceNotFound
from workspaces.interface import Deployment, Endpoint, EndpointActivity, Workspace

PRICE_FILE = Path(__file__).resolve().parents[1] / "data" / "vm_prices.csv"
DECISIONS_ARTIFACT = "teardown-decisions"


# -- prices ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PriceTable:
    """Hourly list prices by instance type, as committed in ``data/vm_prices.csv``."""

    usd_per_hour: dict[str, float]
    price_date: str
    source: str

    def deployment_cost(self, deployment: Deployment) -> float | None:
        """USD per hour of one deployment, None when its size is not in the table."""
        price = self.usd_per_hour.get(deployment.instance_type.lower())
        return None if price is None else price * deployment.instance_count

    def endpoint_cost(self, endpoint: Endpoint) -> float | None:
        """USD per hour of all the endpoint's deployments (an empty endpoint costs 0)."""
        costs = [self.deployment_cost(d) for d in endpoint.deployments]
        return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read the price CSV (``#`` lines are comments); a missing file gives an empty table."""
    source = Path(path) if path else PRICE_FILE
    try:
        lines = [ln for ln in source.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except FileNotFoundError:
        return PriceTable({}, "n/a", f"{source} (missing)")
    prices: dict[str, float] = {}
    dates: set[str] = set()
    for row in csv.DictReader(lines):
        size = (row.get("vm_size") or "").strip().lower()
        if size and size not in prices:  # first row of a size wins (one region per table)
            prices[size] = float(row["usd_per_hour"])
            dates.add((row.get("price_date") or "").strip())
    return PriceTable(prices, ", ".join(sorted(d for d in dates if d)) or "undated", str(source))


def format_usd(value: float | None) -> str:
    """``1.23``, or ``unknown`` for a size the price table lacks."""
    return "unknown" if value is None else f"{value:.2f}"


# -- reading -----------------------------------------------------------------------------
@task(name="list-endpoints", cache_policy=NO_CACHE, **transient_retries())
def list_endpoints(workspace: Workspace) -> list[Endpoint]:
    """Every endpoint in the workspace with its deployments (the flow keeps managed ones)."""
    endpoints = workspace.list_endpoints()
    get_run_logger().info("The workspace has %d endpoint(s)", len(endpoints))
    return endpoints


@task(name="read-endpoints-activity", cache_policy=NO_CACHE, **transient_retries())
def read_endpoints_activity(
    workspace: Workspace, endpoint_names: list[str], start: datetime, end: datetime
) -> dict[str, EndpointActivity]:
    """Requests each endpoint served in [start, end), read in as few requests as the
    workspace allows (Azure: one Azure Monitor query per 50 endpoints)."""
    activities = workspace.get_endpoints_activity(endpoint_names, start, end)
    logger = get_run_logger()
    for name in endpoint_names:
        activity = activities.get(name)
        logger.info(
            "Activity of %s: %s", name,
            "not answered" if activity is None
            else dict(activity.requests_by_caller) if activity.available
            else f"unavailable ({activity.reason})",
        )
    return activities


# -- deleting ----------------------------------------------------------------------------
@task(name="delete-failed-deployment", cache_policy=NO_CACHE, **transient_retries())
def delete_deployment_and_wait(
    workspace: Workspace, endpoint_name: str, name: str, timeout_minutes: float
) -> None:
    """Delete one deployment and wait until the endpoint no longer lists it."""
    try:
        workspace.begin_delete_deployment(endpoint_name, name)
    except ResourceNotFound:
        pass
    poll_until(
        lambda: workspace.deletion_finished(endpoint_name, name), bool,
        timeout_minutes * 60, f"deletion of deployment {name} on {endpoint_name}",
        max_delay_s=DELETE_POLL_MAX_DELAY_S,
    )
    get_run_logger().info("Deleted deployment %s of endpoint %s", name, endpoint_name)


# -- reporting ---------------------------------------------------------------------------
def report_decisions(rows: list[dict[str, Any]], summary: str) -> None:
    """The table a platform owner reads: one row per endpoint (or failed deployment)."""
    create_table_artifact(
        key=DECISIONS_ARTIFACT,
        table=rows or [{"endpoint": "-", "decision": "none",
                        "reason": "no endpoint carries the managed-by tag"}],
        description=summary,
    )
