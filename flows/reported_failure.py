"""Failures a flow has already explained, logged once and without a traceback.

A failed smoke test is a finding, not a bug: the run has written its artifact, emitted
its event and named the endpoints in the exception's message. Prefect would still log
the exception with its traceback ("Encountered exception during execution"), and then,
in a worker's process, a second time ("Engine execution exited with unexpected
exception"), so a person reading the worker log saw two tracebacks of our own code for
one expected outcome. ``install()`` puts a filter on Prefect's flow-run, task-run and
engine loggers: for a :class:`ReportedFailure` (and a refused request, whose message
names the field) the first record keeps its message and loses the traceback, and the
engine's repeat is dropped. Every other exception is logged as Prefect logs it.
"""

from __future__ import annotations

import logging

from workspaces.errors import InvalidRequest

# The loggers Prefect's engines write those records to (flow_run_logger, task_run_logger
# and the engine's own logger).
FLOW_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")
ENGINE_REPEAT = "Engine execution exited with unexpected exception"


class ReportedFailure(Exception):
    """A failure whose message says everything; the run's artifacts say the rest."""


QUIET = (ReportedFailure, InvalidRequest)


class QuietReportedFailures(logging.Filter):
    """Strip the traceback of a reported failure; drop the engine's repeat of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to log ``record``; a reported failure's is changed to carry no traceback."""
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, QUIET):
            return True
        if ENGINE_REPEAT in record.getMessage():
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def install() -> None:
    """Add the filter once to each of Prefect's run loggers (idempotent)."""
    for name in FLOW_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietReportedFailures) for f in logger.filters):
            logger.addFilter(QuietReportedFailures())
