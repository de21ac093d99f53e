"""Settings every run needs, however it is started: `make`, `python -m flows.…`, a script.

They are applied here, on the import of :mod:`flows`, not by the Makefile: a flow called
from Python would otherwise wait Prefect's default 20 s for its temporary server and, on a
loaded machine, fail with "Timed out while attempting to connect to ephemeral Prefect API
server". A value the user sets in the environment or in a Prefect profile wins over these.
"""

from __future__ import annotations

import gc
import os
import sys

RUN_SETTINGS = {
    # A temporary server on a busy 2-core machine needs more than the default 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Nothing of a run leaves the machine unasked (the temporary server's telemetry).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Tokenizers fork-warn and oversubscribe the cores once a job or server forks.
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_run_settings() -> None:
    """Put the run settings in the environment where the user has not set them.

    Prefect reads its settings when it is first imported; when something imported it
    before this module, the process's settings are rebuilt from the environment (a
    profile's values still apply: Prefect layers them under the environment).
    """
    missing = {k: v for k, v in RUN_SETTINGS.items() if k not in os.environ}
    if not missing:
        return
    os.environ.update(missing)
    if "prefect.context" in sys.modules and any(k.startswith("PREFECT_") for k in missing):
        _reload_prefect_settings()


def _reload_prefect_settings() -> None:
    import prefect.context
    from prefect.settings import Settings

    current = prefect.context.GLOBAL_SETTINGS_CONTEXT
    if current is None:
        return
    # The global context is the one every later SettingsContext.get() falls back to.
    prefect.context.GLOBAL_SETTINGS_CONTEXT = current.model_copy(update={"settings": Settings()})


def skip_final_collection() -> None:
    """Leave everything alive now out of the interpreter's last garbage collection.

    Called by a flow's command line once the run is over and printed. At exit Python runs
    the atexit work (Prefect's log and event flush, its temporary server's stop), then
    collects every object still alive, which the process's end reclaims anyway: 1.1-1.3 s
    of a cached ``make demo`` re-run of 10 s, measured on 2 idle cores (2026-12-07).
    Objects still end through their reference counts; only the cycle search over them is
    skipped. Never call it in a process that goes on working (a test, a worker): nothing
    alive now would be collected again.
    """
    gc.freeze()
