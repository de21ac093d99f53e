"""Polling with back-off and a deadline, for long waits (jobs, provisioning)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from workspaces.errors import DeadlineExceeded

T = TypeVar("T")


def poll_until(
    read: Callable[[], T],
    done: Callable[[T], bool],
    deadline_s: float,
    what: str,
    on_change: Callable[[T], None] | None = None,
    first_delay_s: float = 0.5,
    max_delay_s: float = 60.0,
) -> T:
    """Call ``read`` until ``done`` holds, sleeping longer each time (x1.5, capped).

    ``on_change`` sees every reading (for logging and progress). Raises DeadlineExceeded
    naming ``what`` after ``deadline_s`` seconds.
    """
    started = time.monotonic()
    delay = min(first_delay_s, max_delay_s)
    while True:
        value = read()
        if on_change:
            on_change(value)
        if done(value):
            return value
        elapsed = time.monotonic() - started
        if elapsed >= deadline_s:
            raise DeadlineExceeded(f"{what} did not finish within {deadline_s / 60:.1f} minutes")
        time.sleep(min(delay, max(deadline_s - elapsed, 0.1)))
        delay = min(delay * 1.5, max_delay_s)
