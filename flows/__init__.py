"""Prefect flows: one module per flow; each composes tasks and decides."""
