"""Benchmark `make demo`'s re-run against its first run; prints figures, asserts nothing.

Runs the demo's command (``python -m flows.finetune_and_deploy --endpoint-name chatft-demo
--rollout.strategy canary``, offline, a temporary Prefect server per run, as ``make demo``
does) on a new state directory, so the first run is a first run: the SmolLM2 conversion,
the job, the registration, the first release and the sample's reply. Then it times the
re-runs: plain ones (nothing changed: answered from the receipt, no flow run) and ones
with ``CHATFT_ALWAYS_RUN=1`` (the whole flow, every step reused). It prints each time and
the ratios to the first run. The state directory's endpoints are deleted at the end.

Run: ``python scripts/bench_demo_rerun.py [--reruns 3]`` after ``make install`` (it needs
the model file in .models/), on idle cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEMO = ["-m", "flows.finetune_and_deploy", "--endpoint-name", "chatft-demo",
        "--rollout.strategy", "canary"]


def timed(env: dict[str, str]) -> tuple[float, str]:
    """Seconds from start to exit of one demo command, and what it printed last."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *DEMO], cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the demo command failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=3, help="re-runs of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as folder:
        state = Path(folder) / "workspace"
        env = {k: v for k, v in os.environ.items() if k != "CHATFT_ALWAYS_RUN"}
        env |= {"HF_HUB_OFFLINE": "1", "CHATFT_STATE_DIR": str(state)}
        try:
            first, printed = timed(env)
            print(f"first run: {first:.1f} s")
            reply = next((line for line in printed.splitlines() if line.startswith("Reply:")), "")
            print(f"  {reply}")
            plain = [timed(env)[0] for _ in range(args.reruns)]
            forced = [timed(env | {"CHATFT_ALWAYS_RUN": "1"})[0] for _ in range(args.reruns)]
        finally:
            subprocess.run([sys.executable, "-m", "workspaces.local.cli", "--state-dir",
                            str(state), "endpoints", "delete", "--all"], cwd=PROJECT_DIR,
                           capture_output=True)
    for name, times in (("re-run, nothing changed (receipt, no flow run)", plain),
                        ("re-run through the flow (CHATFT_ALWAYS_RUN=1)", forced)):
        median = statistics.median(times)
        print(f"{name}: " + ", ".join(f"{t:.2f}" for t in times)
              + f" s; median {median:.2f} s, {median / first:.3f} of the first run")


if __name__ == "__main__":
    main()
