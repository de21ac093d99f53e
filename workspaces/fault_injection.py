"""Fault injection for the crash tests: hold a process at a named point so a test kills it there.

The crash tests (tests/flows/test_rollout_crashes.py, test_kill_matrix.py,
test_release_control.py, test_rollout_interference.py, and their Azure twins) prove that a
run killed with -9 at any point leaves what the next run, or the scheduled recovery, can
finish. To kill a run at an exact point, the test sets one of these variables in the run's
environment; the hook touches a marker file the test waits for, then sleeps an hour, so
the kill lands there and nowhere else. Unset (as in every real run), each hook returns at
once and does nothing.

- ``CHATFT_HOLD_AFTER_ROLLOUT=<point>:<marker file>``: a release (flows/rollout.py) holds
  right after the step ``point`` (``deployment-created``, ``first-deployment-created``,
  ``canary-set``, ``promoted``, ``old-deleted``); ``marker file`` is touched first.
- ``CHATFT_HOLD_AFTER_SPAWN=<module>``: :func:`workspaces.local.state.spawn_detached`
  holds its caller once the process running ``module`` exists and before its pid is
  recorded; ``.held`` in the process's folder is the marker.

They live in the lowest layer so flows and workspaces alike can call them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ROLLOUT_HOLD_ENV = "CHATFT_HOLD_AFTER_ROLLOUT"
SPAWN_HOLD_ENV = "CHATFT_HOLD_AFTER_SPAWN"
SPAWN_MARKER = ".held"
# Longer than any crash test waits: the test's kill, never the sleep's end, ends the hold.
HOLD_SECONDS = 3600


def hold_after_rollout_step(point: str) -> None:
    """Hold here when ``$CHATFT_HOLD_AFTER_ROLLOUT`` names ``point``; else return at once."""
    held = os.environ.get(ROLLOUT_HOLD_ENV, "")
    name, _, marker = held.partition(":")
    if name == point:
        Path(marker).touch()
        time.sleep(HOLD_SECONDS)


def hold_after_spawn(module: str, folder: Path) -> None:
    """Hold here when ``$CHATFT_HOLD_AFTER_SPAWN`` names ``module``; else return at once."""
    if os.environ.get(SPAWN_HOLD_ENV) == module:
        (folder / SPAWN_MARKER).touch()
        time.sleep(HOLD_SECONDS)
