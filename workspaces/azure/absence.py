"""What this workspace object has just found absent, for the check before its own write.

A task reads a resource to decide what to do (``get_job``, ``get_model``, ``get_endpoint``)
and, finding none, asks the workspace to create it; the workspace checks again right before
its write, because a job must not be submitted twice and a model version or an endpoint of
another request must not be taken. When the task's read answered "not found" a moment ago,
that answer is the check: it is taken once, within :data:`ABSENCE_STANDS_S`, instead of a
second identical 404 one round trip later. An older absence, one already taken, or one a
later read or write replaced is asked of the service again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The time between a task's read and the write it decides on is a log line; five seconds
# cover a loaded machine, and the window another writer could slip in stays seconds.
ABSENCE_STANDS_S = 5.0


class RecentAbsences:
    """Resources (kind, name) a read found absent, each with when it was read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start with no absence; ``clock`` gives the seconds an absence is aged by
        (monotonic, so a change of the wall clock never lets one stand longer). One
        object may be shared by threads: every change is made under a lock."""
        self._at: dict[tuple[str, str], float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def saw(self, kind: str, name: str, absent: bool) -> None:
        """Record what a read found: absent, or there (which replaces an absence)."""
        with self._lock:
            if absent:
                self._at[(kind, name)] = self._clock()
            else:
                self._at.pop((kind, name), None)

    def forget(self, kind: str, name: str) -> None:
        """This workspace wrote the resource: no absence of it stands."""
        self.saw(kind, name, absent=False)

    def take(self, kind: str, name: str) -> bool:
        """True, once, when a read found the resource absent within ABSENCE_STANDS_S."""
        with self._lock:
            at = self._at.pop((kind, name), None)
        return at is not None and self._clock() - at <= ABSENCE_STANDS_S
