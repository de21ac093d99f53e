"""Prefect flows: one module per flow; each composes tasks and decides."""

from flows.startup import apply_run_settings

# Before any flow module imports Prefect: the settings every run needs, however started.
apply_run_settings()
