"""Reuse or create the fine-tune cluster (step 3 of docs/procedure.md), on any workspace.

Reuse the compute when it exists (a ``size`` other than its own is refused:
:func:`workspaces.compute_rules.check_existing_cluster_size`); otherwise create it with
tier ``Dedicated`` and, if Azure refuses, with ``LowPriority``; if both are refused the
size is not available here.
"""

from __future__ import annotations

from workspaces.compute_rules import check_existing_cluster_size
from workspaces.errors import InvalidRequest, QuotaExceeded
from workspaces.interface import ComputeTarget, Workspace

TIERS = ("Dedicated", "LowPriority")


def ensure_compute(
    workspace: Workspace,
    name: str,
    size: str,
    max_instances: int = 1,
    tiers: tuple[str, ...] | list[str] = TIERS,
    size_asked: bool = True,
    *,
    checked: bool = False,
    existing: ComputeTarget | None = None,
) -> ComputeTarget:
    """The existing compute ``name``, or a new one of ``size``; raises with the fix if neither.

    ``size_asked`` False means ``size`` is only the default for a new cluster (the request
    left compute_size empty), so an existing cluster of any size is taken.

    ``tiers`` are the tiers to try, in order (the quota check leaves out those without
    room). Transient and authentication errors propagate at once: only a refusal of the
    size or quota moves on to the next tier.

    ``checked`` True: ``existing`` is the compute as the caller read it moments ago (the
    pre-flight; None: there was none), and it is not read again. A cluster someone made
    in between gets this create-or-update: the read never made creating exclusive (a
    compute PUT creates or updates), it only chooses between reuse and create.
    """
    if not checked:
        existing = workspace.get_compute(name)
    if existing is not None:
        check_existing_cluster_size(existing, size if size_asked else None)
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
