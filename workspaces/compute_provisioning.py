"""Reuse or create the fine-tune cluster (MISSION step 3), on any workspace.

Reuse the compute when it exists; otherwise create it with tier ``Dedicated`` and, if Azure
refuses, with ``LowPriority``; if both are refused the size is not available here.
"""

from __future__ import annotations

from workspaces.errors import InvalidRequest, QuotaExceeded
from workspaces.interface import ComputeTarget, Workspace

TIERS = ("Dedicated", "LowPriority")


def ensure_compute(
    workspace: Workspace,
    name: str,
    size: str,
    max_instances: int = 1,
    tiers: tuple[str, ...] | list[str] = TIERS,
) -> ComputeTarget:
    """The existing compute ``name``, or a new one of ``size``; raises with the fix if neither.

    ``tiers`` are the tiers to try, in order (the quota check leaves out those without
    room). Transient and authentication errors propagate at once: only a refusal of the
    size or quota moves on to the next tier.
    """
    existing = workspace.get_compute(name)
    if existing is not None:
        return existing
    refusals: list[str] = []
    for tier in tiers:
        try:
            return workspace.create_compute(name, size, tier, max_instances)
        except (InvalidRequest, QuotaExceeded) as exc:
            refusals.append(f"{tier}: {exc}")
    raise QuotaExceeded(
        f"compute size not available in workspace: {size} could not be created as "
        f"{' or '.join(tiers)} ({'; '.join(refusals)}). Pick another size from the model's "
        "allow list, request quota for this VM family, or name an existing cluster."
    )
