"""Benchmark: what Prefect costs the flows, in two setups; prints figures, asserts nothing.

Two setups, each measured in fresh processes so settings and caches start equal:

- ``running``: a Prefect server already runs (``PREFECT_API_URL`` set), as on a worker;
- ``temporary``: nothing set, so Prefect starts a temporary server in the process, as a
  command-line run (``python -m flows.finetune_and_deploy``) does.

What it prints:

1. Per-task overhead: a flow calls tasks whose bodies do nothing, decorated as the
   project's are (one ``NO_CACHE`` with transient retries, one cached on its inputs with
   its result persisted). The median wall time of one call, seen from the flow, is what
   Prefect adds to every task (goal: under 50 ms). The same again with settings changed
   (logging to the API off; results not persisted), to see which help.
2. The real flow against the same steps called directly: ``finetune_and_deploy`` on the
   local workspace, first run, against ``scripts/bench_finetune_and_deploy.run_direct``
   (the same workspace calls, no Prefect, none of the flow's checks and reports), each as
   a whole process from start to the end of its work (goal with a running server:
   overhead at most 5 % of the first run). ``--model standin`` (default) trains the
   2-layer stand-in (a run of about half a minute, so the fixed cost shows most);
   ``--model smollm2`` trains SmolLM2 as ``make demo`` does (the model is converted once
   beforehand and shared, so the conversion counts in neither). ``--repeat N`` runs N
   rounds of direct, then flow; the overhead is the median of each round's difference.
   ``--skip-flow`` leaves this out (it trains).
3. A cProfile of the per-task flow with a running server: the functions where the flow's
   thread spends Prefect's time.

Run it:
    python scripts/bench_overhead.py                  # all of it (trains the stand-in twice
                                                      # per setup: minutes)
    python scripts/bench_overhead.py --skip-flow      # per-task figures and profile only
    python scripts/bench_overhead.py --skip-tasks     # the finetune comparison only
    python scripts/bench_overhead.py --skip-tasks --model smollm2 --setups running --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As in the Makefile: on a busy 2-core machine a temporary server needs more than 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

TASK_CALLS = 40
# Settings tried on the per-task flow: name -> environment.
VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "logging to API off": {"PREFECT_LOGGING_TO_API_ENABLED": "false"},
    "results not persisted": {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
                              "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false"},
}


# -- children: each measurement runs in its own process --------------------------------
def child_tasks(calls: int, profile: bool) -> dict[str, Any]:
    """Median call time of do-nothing tasks inside one flow."""
    from prefect import flow, task
    from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

    from tasks.policies import transient_retries

    @task(cache_policy=NO_CACHE, **transient_retries())
    def plain_step(i: int) -> int:
        return i

    # Like the project's cached steps: keyed on inputs and code (so its result is kept).
    @task(cache_policy=INPUTS + TASK_SOURCE)
    def cached_step(i: int, salt: float) -> int:
        return i

    @flow(name="bench-overhead")
    def many(calls: int) -> dict[str, list[float]]:
        salt = time.time()  # new cache keys each process: every call is a first run
        timings: dict[str, list[float]] = {"plain": [], "cached": []}
        for i in range(calls):
            started = time.perf_counter()
            plain_step(i)
            timings["plain"].append(time.perf_counter() - started)
            started = time.perf_counter()
            cached_step(i, salt)
            timings["cached"].append(time.perf_counter() - started)
        return timings

    started = time.perf_counter()
    many(1)  # the first flow run of the process: a temporary server starts here
    first_flow_s = time.perf_counter() - started
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    timings = many(calls)
    flow_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "first_flow_s": first_flow_s,
        "flow_s": flow_s,
        "plain_ms": statistics.median(timings["plain"][1:]) * 1000,
        "cached_ms": statistics.median(timings["cached"][1:]) * 1000,
    }
    if profiler is not None:
        profiler.disable()
        result["profile"] = profile_summary(profiler)
    return result


def profile_summary(profiler: Any, top: int = 14) -> list[str]:
    """The functions with the most own time, then Prefect's areas by cumulative time."""
    import pstats

    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, cumulative, calls, f"{_short(path)}:{line}({name})"))
    lines = [f"{'own s':>7} {'cum s':>7} {'calls':>7}  function (own time, top {top})"]
    lines += [f"{own:7.3f} {cum:7.3f} {calls:7d}  {where}"
              for own, cum, calls, where in sorted(rows, reverse=True)[:top]]
    areas = {
        "task engine (states, hooks, context)": "prefect/task_engine.py",
        "API client (HTTP to the server)": "prefect/client/orchestration",
        "results (serialize, persist, cache lookups)": "prefect/results.py",
        "cache key (hash inputs, read task source)": "prefect/cache_policies.py",
        "events (emit, queue)": "prefect/events/",
        "logging (format, queue for the API)": "prefect/logging/",
        "settings lookups": "prefect/settings/",
        "pydantic validation": "pydantic/",
    }
    lines.append("cumulative time by area (the largest entry of each area):")
    for label, fragment in areas.items():
        found = [cum for own, cum, calls, where in rows if fragment in where]
        lines.append(f"  {label:46s} {max(found, default=0.0):7.3f} s")
    return lines


def _short(path: str) -> str:
    marker = "site-packages/"
    return path.split(marker, 1)[1] if marker in path else path


def child_finetune(mode: str, state: Path, model_name: str) -> dict[str, Any]:
    """One first run of finetune_and_deploy, or the same steps without Prefect."""
    import importlib.util

    started = time.perf_counter()
    if mode == "flow":
        from flows.finetune_and_deploy import finetune_and_deploy
        from flows.parameters import FinetuneRequest

        os.environ["CHATFT_STATE_DIR"] = str(state)
        finetune_and_deploy(request=FinetuneRequest(
            foundation_model=model_name, download_dir=str(state / "download")))
    else:
        spec = importlib.util.spec_from_file_location(
            "bench_finetune_and_deploy", PROJECT_DIR / "scripts" / "bench_finetune_and_deploy.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.run_direct(state, model_name)
    return {"call_s": time.perf_counter() - started,
            "process_s": time.perf_counter() - STARTED}


# -- parent ----------------------------------------------------------------------------
def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env,
                          capture_output=True, text=True, cwd=PROJECT_DIR)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_server(home: Path) -> Any:
    import socket

    from server.instance import Server
    from server.manager import start_server
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Server(home, "127.0.0.1", port)
    start_server(server)
    return server


def setup_env(setup: str, server: Any, home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    if setup == "running":
        env["PREFECT_API_URL"] = server.api_url
    env.update(extra)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--skip-flow", action="store_true",
                        help="leave out the finetune_and_deploy comparison (it trains)")
    parser.add_argument("--skip-tasks", action="store_true",
                        help="leave out the per-task figures and the profile")
    parser.add_argument("--calls", type=int, default=TASK_CALLS)
    parser.add_argument("--model", choices=["standin", "smollm2"], default="standin",
                        help="the model the finetune comparison trains")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the finetune comparison (medians are reported)")
    parser.add_argument("--setups", nargs="+", choices=["running", "temporary"],
                        default=["running", "temporary"],
                        help="Prefect setups of the finetune comparison")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "tasks":
            result = child_tasks(int(rest[0]), profile=rest[1] == "profile")
        else:
            result = child_finetune(rest[0], Path(rest[1]), rest[2])
        print(json.dumps(result))
        return

    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_server(root / "server-home")
        try:
            measure(args, root, server)
        finally:
            server.stop("server")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def measure(args: argparse.Namespace, root: Path, server: Any) -> None:
    profile: list[str] = []
    if not args.skip_tasks:
        print(f"\n1. per-task overhead: median of {args.calls} calls of a do-nothing task")
        print(f"   {'setup':10s} {'settings':24s} {'plain':>8s} {'cached':>8s} "
              f"{'first flow of the process':>26s}")
    for setup in ("running", "temporary") if not args.skip_tasks else ():
        for label, extra in VARIANTS.items():
            home = root / f"home-{setup}-{len(profile)}-{label.replace(' ', '-')}"
            with_profile = setup == "running" and label == "defaults"
            result = run_child(["tasks", str(args.calls),
                                "profile" if with_profile else "plain"],
                               setup_env(setup, server, home, extra))
            print(f"   {setup:10s} {label:24s} {result['plain_ms']:6.1f} ms "
                  f"{result['cached_ms']:6.1f} ms {result['first_flow_s']:22.1f} s", flush=True)
            profile = result.get("profile", profile)

    if not args.skip_flow:
        compare_finetune(args, root, server)

    if profile:
        print("\n3. cProfile of the per-task flow, running server, flow thread:")
    for line in profile:
        print("   " + line)


def shared_model(root: Path, model: str) -> tuple[str, str, Path]:
    """The model built (or converted) once, for every run to link into its catalog."""
    from workspaces.local import catalog

    if model == "smollm2":
        name, version = catalog.SMOLLM2_NAME, catalog.SMOLLM2_VERSION
        return name, version, catalog.convert_smollm2(root / "shared-catalog" / name / version)
    name, version = catalog.STANDIN_NAME, catalog.STANDIN_VERSION
    return name, version, catalog.build_standin(root / "shared-catalog" / name / version)


def compare_finetune(args: argparse.Namespace, root: Path, server: Any) -> None:
    print(f"\n2. finetune_and_deploy ({args.model}) first run vs the same steps directly, "
          f"whole process, {args.repeat} round(s)")
    name, version, built = shared_model(root, args.model)
    seconds: dict[str, list[float]] = {setup: [] for setup in ("direct", *args.setups)}
    for round_no in range(args.repeat):
        for setup in seconds:
            state = root / f"state-{setup}-{round_no}"
            (state / "catalog" / name).mkdir(parents=True)
            os.symlink(built, state / "catalog" / name / version)
            try:
                result = run_child(
                    ["finetune", "direct" if setup == "direct" else "flow", str(state), name],
                    setup_env(setup, server, root / f"home-flow-{setup}-{round_no}", {}))
            finally:
                delete_endpoints(state)
            seconds[setup].append(result["process_s"])
            print(f"   round {round_no + 1}: {setup:9s} {result['process_s']:7.1f} s", flush=True)
    direct = seconds.pop("direct")
    print(f"   direct calls, no Prefect: median {statistics.median(direct):7.1f} s")
    for setup, runs in seconds.items():
        overhead = statistics.median(f - d for f, d in zip(runs, direct, strict=True))
        run_s = statistics.median(runs)
        print(f"   flow, {setup} server: median {run_s:7.1f} s  overhead {overhead:5.1f} s "
              f"({overhead / run_s * 100:4.1f} % of the run)", flush=True)


def delete_endpoints(state: Path) -> None:
    from workspaces.local import LocalWorkspace

    ws = LocalWorkspace(state)
    for endpoint in ws.list_endpoints():
        ws.begin_delete_endpoint(endpoint.name)


if __name__ == "__main__":
    main()
