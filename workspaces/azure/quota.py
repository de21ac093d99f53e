"""Cluster quota from the region's usage rows (``compute.list_usage()``), counted as Azure does.

Azure names the rows in words, not by the VM-size family id ``list_sizes()`` returns
(REST example ``Usage/list.json``):

- per family, subscription level: ``Standard NCSv3 Family Cluster Dedicated vCPUs`` (a limit)
  and ``... Cluster LowPriority vCPUs`` (limit -1: no family limit of its own);
- regional totals: ``Total Cluster Dedicated Regional vCPUs`` and
  ``Total Cluster LowPriority Regional vCPUs`` (low-priority quota is regional only);
- the same family again, scoped to a workspace and to each cluster. Those say who uses the
  vCPUs; adding them to the subscription rows would count the same vCPUs twice. A
  cluster's own row tells how many of the used vCPUs are that cluster's own nodes, which
  a job on that cluster does not need twice.

A Dedicated cluster needs room in its family row and in the regional dedicated total; a
LowPriority cluster in the regional low-priority total (and in its family row, should
that ever carry a limit). A row Azure does not report limits nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workspaces.failure_advice import QUOTA_ADVICE
from workspaces.interface import ComputeTarget, QuotaCheck

TIERS = ("Dedicated", "LowPriority")
REGIONAL = {"Dedicated": "totalclusterdedicatedregionalvcpus",
            "LowPriority": "totalclusterlowpriorityregionalvcpus"}
_COMPUTE_ROW = re.compile(r"/workspaces/([^/]+)/computes/([^/]+)/usages/", re.IGNORECASE)
ADVICE = (
    f"{QUOTA_ADVICE}; or lower num_nodes_finetune, or name an existing cluster with free nodes"
)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class UsageRow:
    """One usage row: its name key, who it counts (subscription, workspace or one
    cluster), and the numbers."""

    key: str
    used: int
    limit: int | None
    scope: str
    workspace: str | None = None
    compute: str | None = None


def usage_rows(usages: Iterable[Any]) -> list[UsageRow]:
    """Rows of ``compute.list_usage()`` (SDK ``Usage`` objects) as plain records."""
    rows = []
    for usage in usages:
        raw = vars(usage)
        name = usage.name
        name = name.get("value") if isinstance(name, dict) else getattr(name, "value", None)
        # azure-ai-ml 1.35 keeps currentValue under its REST key (as with VM sizes).
        used = raw.get("current_value")
        used = raw.get("currentValue") if used is None else used
        limit = raw.get("limit")
        row_id, row_type = str(raw.get("id") or ""), str(raw.get("type") or "").lower()
        match = _COMPUTE_ROW.search(row_id)
        if match or row_type.endswith("computes/usages"):
            scope = "compute"
        elif "/workspaces/" in row_id.lower() or "workspace" in row_type:
            scope = "workspace"
        else:
            scope = "subscription"
        rows.append(UsageRow(
            key=_key(str(name or "")),
            used=int(used or 0),
            limit=None if limit is None or int(limit) < 0 else int(limit),
            scope=scope,
            workspace=match.group(1) if match else None,
            compute=match.group(2) if match else None,
        ))
    return rows


def family_row_key(family: str, tier: str) -> str:
    """``standardNCSv3Family`` -> the key of ``Standard NCSv3 Family Cluster <tier> vCPUs``."""
    return _key(f"{family} Cluster {tier} vCPUs")


def _family_label(family: str) -> str:
    return family.removeprefix("standard").removesuffix("Family") or family


def check_quota(
    rows: list[UsageRow],
    size: str,
    family: str,
    vcpus: int,
    nodes: int,
    workspace_name: str,
    existing: ComputeTarget | None = None,
) -> QuotaCheck:
    """Which tiers have room for ``nodes`` nodes of ``size``; an existing cluster keeps its
    tier and does not count its own nodes against itself."""
    needed = vcpus * max(nodes, 1)
    tiers = (existing.tier,) if existing is not None and existing.tier in TIERS else TIERS
    subscription = {r.key: r for r in rows if r.scope == "subscription"}
    fits, notes = [], []
    for tier in tiers:
        family_key = family_row_key(family, tier)
        own = 0
        if existing is not None:
            own = sum(
                r.used for r in rows
                if r.scope == "compute" and r.key == family_key
                and (r.compute or "").lower() == existing.name.lower()
                and (r.workspace or "").lower() == workspace_name.lower()
            )
        limits = []
        for label, key in ((f"family {_family_label(family)}", family_key),
                           ("region", REGIONAL[tier])):
            row = subscription.get(key)
            if row is None or row.limit is None:
                continue
            free = row.limit - row.used + own
            limits.append((label, free, row.limit))
        room = all(free >= needed for _, free, _ in limits)
        counted = "; ".join(f"{label} {max(free, 0)} of {limit} free"
                            for label, free, limit in limits) or "no limit reported"
        whose = f" (cluster {existing.name} is {tier})" if existing is not None else ""
        mine = f", not counting the cluster's own {own}" if own else ""
        notes.append(f"{tier}{whose}: {needed} vCPUs needed, {counted}{mine}")
        if room:
            fits.append(tier)
    refusal = None
    if not fits:
        refusal = (
            f"no tier has quota for {max(nodes, 1)} node(s) of {size} ({vcpus} vCPUs each). "
            f"Considered: {'. '.join(notes)}. {ADVICE}."
        )
    return QuotaCheck(tiers=fits, notes=notes, refusal=refusal)


# Azure keeps 20 % more instances than a deployment asks for, for upgrades: ten instances
# need quota for twelve (Azure ML docs, "Manage and increase quotas", managed online
# endpoints). Deployments draw on the same dedicated vCPU rows as training clusters.
UPGRADE_RESERVE = 1.2


def serving_room(
    rows: list[UsageRow], size: str, family: str, vcpus: int, instances: int
) -> str | None:
    """Why ``instances`` more instances of ``size`` cannot be deployed now, or None."""
    import math

    reserved = math.ceil(instances * UPGRADE_RESERVE)
    needed = vcpus * reserved
    subscription = {r.key: r for r in rows if r.scope == "subscription"}
    short = []
    for label, key in ((f"family {_family_label(family)}", family_row_key(family, "Dedicated")),
                       ("region", REGIONAL["Dedicated"])):
        row = subscription.get(key)
        if row is None or row.limit is None:
            continue
        free = row.limit - row.used
        if free < needed:
            short.append(f"{label} has {max(free, 0)} of {row.limit} dedicated vCPUs free")
    if not short:
        return None
    return (
        f"a canary needs room for a second deployment while the current one serves: "
        f"{instances} x {size} plus Azure's 20 % upgrade reserve = {reserved} instance(s), "
        f"{needed} vCPUs; {'; '.join(short)}"
    )
