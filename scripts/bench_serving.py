"""Benchmark serving: our local endpoint against ``mlflow models serve`` of the same model.

Prints figures, asserts nothing. Our deployment runs with ``instance_count`` 1 and 2
(``--instances``): each instance generates for one request at a time, as Azure's default
``max_concurrent_requests_per_instance``. For 1 and 2 concurrent clients it sends the same
held-out test_gen questions (greedy, ``max_new_tokens`` 20) and prints requests/s, p50 and
p99 latency. Both servers bind 127.0.0.1 on a free port and run the registered model
(base + adapter merged) that a ``make demo`` run left in the workspace's registry.

``mlflow models serve`` runs with ``--env-manager local`` (no environment is built, nothing
is downloaded); if it cannot start offline the script says so and prints our figures only.

Run after ``make demo``: ``python scripts/bench_serving.py [--state-dir .workspace]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from workspaces.interface import DeploymentSpec, EndpointSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAX_NEW_TOKENS = 20
REQUESTS_PER_CLIENT = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def questions(count: int) -> list[list[dict[str, str]]]:
    from workspaces.scoring import up_to_last_question
    from workspaces.ultrachat import SAMPLE_DIR, read_jsonl

    rows = read_jsonl(SAMPLE_DIR / "test_gen.jsonl", limit=count)
    return [up_to_last_question(r["messages"]) for r in rows]


def measure(send: Callable[[list[dict[str, str]]], None], clients: int) -> dict[str, float]:
    asked = questions(REQUESTS_PER_CLIENT * clients)
    send(asked[0])  # warm-up, not counted
    latencies: list[float] = []

    def one(messages: list[dict[str, str]]) -> None:
        started = time.perf_counter()
        send(messages)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, asked))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1000,
    }


def latest_model(state: Path) -> tuple[str, Path]:
    from mlflow import MlflowClient

    from workspaces.local import LocalWorkspace
    from workspaces.local.registry import model_id

    ws = LocalWorkspace(state)
    client = MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)
    versions = client.search_model_versions("name='SmolLM2-135M-Instruct-ultrachat-200k'")
    if not versions:
        raise SystemExit(f"no SmolLM2 model registered in {state}; run `make demo` first")
    latest = max(versions, key=lambda v: int(v.version))
    ident = model_id(latest.name, latest.version)
    return ident, ws.registry.local_path(ident)


def bench_ours(state: Path, model: str, instances: int) -> dict[int, dict[str, float]]:
    from workspaces.local import LocalWorkspace
    from workspaces.scoring import build_body, read_reply

    ws = LocalWorkspace(state)
    name = f"bench-serving-{int(time.time())}-{instances}"
    ws.begin_create_endpoint(EndpointSpec(name=name, description="serving benchmark", tags={}))
    try:
        while ws.get_endpoint(name).provisioning_state == "Creating":
            time.sleep(0.3)
        ws.begin_create_deployment(DeploymentSpec(
            endpoint_name=name, name="demo", model_id=model, instance_type="Local_CPU",
            instance_count=instances, tags={},
        ))
        while ws.get_deployment(name, "demo").provisioning_state == "Creating":
            time.sleep(0.3)
        ws.set_traffic(name, {"demo": 100})

        def send(messages: list[dict[str, str]]) -> None:
            body = build_body(messages, {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False})
            response = ws.invoke(name, body, "demo", caller="benchmark")
            read_reply(response.body)

        return {clients: measure(send, clients) for clients in (1, 2)}
    finally:
        ws.begin_delete_endpoint(name)


def bench_mlflow(model_path: Path) -> dict[int, dict[str, float]] | str:
    """The same model under ``mlflow models serve``; a sentence when it cannot run."""
    from transformers import AutoTokenizer

    mlflow_bin = Path(sys.executable).with_name("mlflow")
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mlflow-serve-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [str(mlflow_bin), "models", "serve", "-m", str(model_path), "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # mlflow starts `uvicorn` by name: the venv's bin must be on PATH even when the
        # venv is not activated (make runs .venv/bin/python directly)
        env={**os.environ, "MLFLOW_DISABLE_ENV_CREATION": "true",
             "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                tail = Path(log.name).read_text()[-600:]
                return f"mlflow models serve exited with {process.returncode}: {tail}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return "mlflow models serve did not answer /ping within 180 s"
            time.sleep(1)
        # mlflow's text-generation pyfunc takes a prompt string: render the chat template
        # here, as our endpoint does inside.
        tokenizer = AutoTokenizer.from_pretrained(model_path / "components" / "tokenizer")

        def send(messages: list[dict[str, str]]) -> None:
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            response = httpx.post(
                f"http://127.0.0.1:{port}/invocations",
                json={"inputs": [prompt],
                      "params": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}},
                timeout=120,
            )
            response.raise_for_status()

        return {clients: measure(send, clients) for clients in (1, 2)}
    finally:
        if process.poll() is None:  # it may have exited on its own (the reason is returned)
            os.killpg(process.pid, 15)
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", default=".workspace")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2],
                        help="instance_count of our deployment (each generates for one "
                             "request at a time, as Azure's default)")
    args = parser.parse_args()
    state = Path(args.state_dir).resolve()
    model, path = latest_model(state)
    print(f"model {model} ({path})")
    ours = {n: bench_ours(state, model, n) for n in args.instances}
    if shutil.which("mlflow") is None and not Path(sys.executable).with_name("mlflow").exists():
        theirs: dict | str = "mlflow CLI not found"
    else:
        theirs = bench_mlflow(path)
    print(f"\n{'server':<22}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for instances, rows in ours.items():
        label = f"ours, {instances} instance{'s' if instances > 1 else ''}"
        for clients, row in rows.items():
            print(f"{label:<22}{clients:>8}{row['rps']:>9.2f}{row['p50']:>9.0f}"
                  f"{row['p99']:>9.0f}")
    if isinstance(theirs, str):
        print(f"mlflow models serve: skipped ({theirs})")
    else:
        for clients, row in theirs.items():
            print(f"{'mlflow models serve':<22}{clients:>8}{row['rps']:>9.2f}{row['p50']:>9.0f}"
                  f"{row['p99']:>9.0f}")
    print(f"(greedy, max_new_tokens {MAX_NEW_TOKENS}, {REQUESTS_PER_CLIENT} requests per client)")


if __name__ == "__main__":
    main()
