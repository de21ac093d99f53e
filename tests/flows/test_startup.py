"""A flow called straight from Python gets the settings `make` used to give it."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

from workspaces.local.state import project_pythonpath

STRIPPED = ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_SERVER_ANALYTICS_ENABLED",
            "PREFECT_API_URL", "PREFECT_PROFILES_PATH")


def _plain_env(tmp_path, **extra: str) -> dict[str, str]:
    # As a person's shell has it (all of it, not a detached job's allow-listed part): none
    # of the Makefile's exports, no server of the tests, the project importable.
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    env.update(PYTHONPATH=project_pythonpath(env.get("PYTHONPATH")),
               PREFECT_HOME=str(tmp_path / "prefect-home"), **extra)
    return env


SHOW = """
import prefect  # imported first, as a user's script may
import flows.finetune_and_deploy
from prefect.settings import get_current_settings
s = get_current_settings()
print(s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled)
"""


def test_run_settings_apply_even_after_prefect_was_imported(tmp_path):
    out = subprocess.run([sys.executable, "-c", SHOW], env=_plain_env(tmp_path),
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["90", "False"]
    # A value the user set is kept.
    mine = _plain_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="45")
    out = subprocess.run([sys.executable, "-c", SHOW], env=mine, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split()[0] == "45"


def _burn(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def test_a_direct_call_on_a_loaded_machine_starts_its_temporary_server(tmp_path):
    # Two busy processes per core, then a flow run from a plain shell: its temporary
    # server (a fresh database to migrate) has to start while every core is taken.
    stop_at = time.time() + 300
    burners = [multiprocessing.Process(target=_burn, args=(stop_at,))
               for _ in range(2 * (os.cpu_count() or 1))]
    for burner in burners:
        burner.start()
    try:
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "flows.smoke_test_endpoints"],
            env=_plain_env(tmp_path, CHATFT_STATE_DIR=str(tmp_path / "workspace")),
            capture_output=True, text=True, timeout=280,
        )
        took = time.monotonic() - started
    finally:
        for burner in burners:
            burner.terminate()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "No endpoint was tested; 0 skipped." in run.stdout
    print(f"direct call under load: {took:.0f} s")


EXIT = """
import atexit, gc, sys
from pathlib import Path
from flows.startup import skip_final_collection

loop = []
loop.append(loop)  # garbage in a cycle, as a run leaves plenty
atexit.register(
    lambda: Path(sys.argv[1]).write_text(f"exit work ran; frozen {gc.get_freeze_count()}"))
print("printed before")
skip_final_collection()
"""


def test_a_command_line_skipping_the_last_collection_still_does_its_exit_work(tmp_path):
    """What a flow's command line does after its run: the atexit work (Prefect's log flush,
    the temporary server's stop) still runs, and what was printed is kept."""
    marker = tmp_path / "exit"
    out = subprocess.run([sys.executable, "-c", EXIT, str(marker)], env=_plain_env(tmp_path),
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout == "printed before\n"
    ran, frozen = marker.read_text().split("; frozen ")
    assert ran == "exit work ran" and int(frozen) > 0
