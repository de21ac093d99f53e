"""Benchmark serving: our local endpoint against ``mlflow models serve`` of the same model.

Prints figures, asserts nothing. Both servers bind 127.0.0.1 on a free port and run the
same registered model, SmolLM2-135M-Instruct: the script converts it from the pinned GGUF
in ``.models/`` (the workspace's catalog does it once) and registers it in the
workspace's registry, with a signature declaring the generation parameters so that
``mlflow models serve`` honours them (no training, no ``make demo`` needed). Our
deployment runs with ``instance_count`` 1 by default (``--instances``); each instance
generates for a batch of requests at once.

For each number of concurrent clients (``--clients``, default 1 4 16) every client sends
``--requests`` held-out test_gen questions one after the other (greedy,
``max_new_tokens`` 20); the two servers are measured in turn at each count (``--rounds``
times), so both see the same minutes of a shared machine. It prints requests/s, p50 and
p99 latency of each and the throughput ratio as a markdown table, then checks the
replies: ours under load against ours from one client (batching must not change a greedy
answer), and mlflow's against ours (both did the same work). A 429 is retried after its
Retry-After, as an Azure client does; the wait counts in the latency.

``mlflow models serve`` runs with ``--env-manager local`` (no environment is built,
nothing is downloaded); if it cannot start offline the script says so and prints our
figures only.

Run: ``python scripts/bench_serving.py [--state-dir .workspace] [--clients 1 4 16]``.
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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from workspaces.interface import DeploymentSpec, EndpointSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAX_NEW_TOKENS = 20
BENCH_MODEL = "SmolLM2-135M-Instruct-bench"
BENCH_VERSION = "1"
GENERATION = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
# How long a client waits for one answer, on both servers (a shared machine can be slow).
REQUEST_TIMEOUT_S = 300

Send = Callable[[list[dict[str, str]]], str]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def questions(count: int) -> list[list[dict[str, str]]]:
    """The first ``count`` held-out questions (each conversation up to its last question)."""
    from workspaces.scoring import up_to_last_question
    from workspaces.ultrachat import SAMPLE_DIR, read_jsonl

    rows = read_jsonl(SAMPLE_DIR / "test_gen.jsonl", limit=count)
    return [up_to_last_question(r["messages"]) for r in rows]


def measure(send: Send, asked: list[list[dict[str, str]]], clients: int) -> dict:
    """Send ``asked`` from ``clients`` threads: wall time, latencies (s) and the replies."""
    send(asked[0])  # warm-up, not counted
    latencies: list[float] = []
    replies: list[str | None] = [None] * len(asked)

    def one(index: int) -> None:
        started = time.perf_counter()
        replies[index] = send(asked[index])
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(len(asked))))
    return {"wall": time.perf_counter() - started, "latencies": latencies, "replies": replies}


def summary(rounds: list[dict]) -> dict:
    """Requests/s over all rounds, p50 and p99 of their latencies in ms, the first replies."""
    latencies = sorted(x for r in rounds for x in r["latencies"])
    return {
        "rps": len(latencies) / sum(r["wall"] for r in rounds),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1000,
        "replies": rounds[0]["replies"],
    }


def bench_model(state: Path) -> tuple[str, Path]:
    """SmolLM2 registered for the bench (converted and registered once): its id and folder."""
    from workspaces.local import LocalWorkspace

    ws = LocalWorkspace(state)
    registered = ws.registry.get(BENCH_MODEL, BENCH_VERSION) or _register_base_model(ws)
    return registered.id, ws.registry.local_path(registered.id)


def _register_base_model(ws) -> object:  # noqa: ANN001 - a LocalWorkspace
    """Convert SmolLM2 (the workspace's catalog does it once) and register it as is.

    Its signature declares the generation parameters: without one ``mlflow models serve``
    ignores them and generates as long as the model's own defaults say, not 20 tokens.
    """
    import mlflow
    from mlflow.models import infer_signature
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"registering the base SmolLM2 as {BENCH_MODEL} {BENCH_VERSION} in {ws.root}")
    weights = ws.prepare_foundation_model(ws.get_foundation_model("SmolLM2-135M-Instruct"),
                                          print)
    target = ws.root / "bench" / f"{BENCH_MODEL}-{BENCH_VERSION}"
    if target.exists():  # a run killed while saving left it half-written
        shutil.rmtree(target)
    mlflow.transformers.save_model(
        transformers_model={"model": AutoModelForCausalLM.from_pretrained(weights),
                            "tokenizer": AutoTokenizer.from_pretrained(weights)},
        path=str(target), task="text-generation",
        signature=infer_signature(["prompt"], ["reply"], params=dict(GENERATION)),
        pip_requirements=["transformers", "torch", "mlflow"],
    )
    return ws.registry.register(BENCH_MODEL, BENCH_VERSION, str(target), None,
                                "base SmolLM2 for scripts/bench_serving.py", {})


@contextmanager
def our_endpoint(state: Path, model: str, instances: int) -> Iterator[tuple[Send, list[int]]]:
    """A local endpoint serving ``model``; yields a send function and the 429 count."""
    from workspaces.local import LocalWorkspace
    from workspaces.scoring import build_body, read_reply

    ws = LocalWorkspace(state)
    name = f"bench-serving-{int(time.time())}-{instances}"
    ws.begin_create_endpoint(EndpointSpec(name=name, description="serving benchmark", tags={}))
    throttled = [0]
    lock = threading.Lock()
    try:
        while ws.get_endpoint(name).provisioning_state == "Creating":
            time.sleep(0.3)
        ws.begin_create_deployment(DeploymentSpec(
            endpoint_name=name, name="demo", model_id=model, instance_type="Local_CPU",
            instance_count=instances, tags={}, request_timeout_ms=REQUEST_TIMEOUT_S * 1000,
        ))
        while ws.get_deployment(name, "demo").provisioning_state == "Creating":
            time.sleep(0.3)
        ws.set_traffic(name, {"demo": 100})

        def send(messages: list[dict[str, str]]) -> str:
            body = build_body(messages, GENERATION)
            while True:
                response = ws.invoke(name, body, "demo", caller="benchmark",
                                     timeout_s=REQUEST_TIMEOUT_S)
                if response.status_code != 429:
                    return read_reply(response.body)
                with lock:
                    throttled[0] += 1
                time.sleep(float(response.headers.get("retry-after", "1")))

        yield send, throttled
    finally:
        ws.begin_delete_endpoint(name)


@contextmanager
def mlflow_server(model_path: Path) -> Iterator[Send | str]:
    """The same model under ``mlflow models serve``; a sentence when it cannot run."""
    from transformers import AutoTokenizer

    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if not mlflow_bin.exists() and shutil.which("mlflow") is None:
        yield "mlflow CLI not found"
        return
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mlflow-serve-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [str(mlflow_bin), "models", "serve", "-m", str(model_path), "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # mlflow starts `uvicorn` by name: the venv's bin must be on PATH even when the
        # venv is not activated (make runs .venv/bin/python directly)
        # Its requests may take as long as ours (mlflow answers 504 after 60 s by default).
        env={**os.environ, "MLFLOW_DISABLE_ENV_CREATION": "true",
             "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
             "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    try:
        problem = _wait_for_ping(process, port, Path(log.name))
        if problem:
            yield problem
            return
        # mlflow's text-generation pyfunc takes a prompt string: render the chat template
        # here, as our endpoint does inside.
        tokenizer = AutoTokenizer.from_pretrained(model_path / "components" / "tokenizer")
        client = httpx.Client(timeout=REQUEST_TIMEOUT_S)  # one for all: each new one costs CPU

        def send(messages: list[dict[str, str]]) -> str:
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            response = client.post(f"http://127.0.0.1:{port}/invocations",
                                   json={"inputs": [prompt], "params": GENERATION})
            response.raise_for_status()
            # The pipeline answers the prompt followed by the reply.
            return response.json()["predictions"][0].removeprefix(prompt).strip()

        yield send
    finally:
        if process.poll() is None:  # it may have exited on its own (the reason is yielded)
            os.killpg(process.pid, 15)
            process.wait(timeout=30)


def _wait_for_ping(process: subprocess.Popen, port: int, log: Path) -> str | None:
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            return f"mlflow models serve exited with {process.returncode}: {log.read_text()[-600:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return "mlflow models serve did not answer /ping within 180 s"
        time.sleep(1)


def print_table(rows: list[dict], instances: int, requests: int) -> None:
    """A markdown table of both servers at each client count."""
    print("\n| clients | ours req/s | ours p50 ms | ours p99 ms | mlflow req/s | mlflow p50 ms "
          "| mlflow p99 ms | throughput ours/mlflow |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = row["ours"], row.get("mlflow")
        line = f"| {row['clients']} | {ours['rps']:.2f} | {ours['p50']:.0f} | {ours['p99']:.0f} |"
        if theirs:
            line += (f" {theirs['rps']:.2f} | {theirs['p50']:.0f} | {theirs['p99']:.0f} |"
                     f" {ours['rps'] / theirs['rps']:.2f}x |")
        else:
            line += " - | - | - | - |"
        print(line)
    print(f"\nSmolLM2-135M-Instruct, greedy, max_new_tokens {MAX_NEW_TOKENS}, {requests} requests "
          f"per client in all; ours: instance_count {instances}; mlflow models serve: 1 worker")


def main() -> None:
    """Measure both servers at each client count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", default=".workspace")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds per client count, the servers in turn")
    parser.add_argument("--instances", type=int, default=1,
                        help="instance_count of our deployment")
    args = parser.parse_args()
    state = Path(args.state_dir).resolve()
    model, path = bench_model(state)
    print(f"model {model} ({path})")
    rows = []
    with our_endpoint(state, model, args.instances) as (ours, throttled), \
            mlflow_server(path) as theirs:
        if isinstance(theirs, str):
            print(f"mlflow models serve: skipped ({theirs})")
        for clients in args.clients:
            asked = questions(args.requests * clients)
            measured: dict[str, list[dict]] = {"ours": [], "mlflow": []}
            for _ in range(args.rounds):  # in turn, so a change of load hits both
                measured["ours"].append(measure(ours, asked, clients))
                if not isinstance(theirs, str):
                    measured["mlflow"].append(measure(theirs, asked, clients))
            rows.append({"clients": clients,
                         **{side: summary(r) for side, r in measured.items() if r}})
            print(f"{clients} clients done", flush=True)
    print_table(rows, args.instances, args.requests * args.rounds)
    print_replies_check(rows)
    print(f"429 answers retried by our clients: {throttled[0]}")


def print_replies_check(rows: list[dict]) -> None:
    """How many replies agree: ours under load with ours alone, mlflow's with ours."""
    first = rows[0]["ours"]["replies"]
    for row in rows:
        ours = row["ours"]["replies"]
        if row is not rows[0] and rows[0]["clients"] == 1:
            # the first questions are the same at every count
            same = sum(a == b for a, b in zip(first, ours[: len(first)], strict=True))
            print(f"{row['clients']} clients: {same} of {len(first)} of our greedy replies "
                  "equal those one client got")
        if "mlflow" in row:
            theirs = row["mlflow"]["replies"]
            same = sum(a == b for a, b in zip(ours, theirs, strict=True))
            print(f"{row['clients']} clients: {same} of {len(ours)} mlflow replies equal ours")


if __name__ == "__main__":
    main()
