"""Benchmark: what a canary release costs; prints figures, asserts nothing.

On a fresh local workspace with the 2-layer stand-in (the model's size does not change
the rollout's own steps, only its training):

1. ``finetune_and_deploy`` releases version 1 onto endpoint A (first release), then
   version 2 as a canary (gate, deployment at 0 %, contract, 10 % share, watch, promote).
   The wall time of the release step inside the flow is measured.
2. The same workspace calls, made directly on endpoint B (no Prefect, no artifacts, no
   events): claim, deployment at 0 % and its wait, the contract requests, the canary
   share, the same watch (probes by header until each deployment has answered
   ``--watch-requests`` and ``--watch-seconds`` have passed), promotion, deletion of the
   old deployment. The difference is the flow's overhead for the rollout.
3. The canary split, measured: ``--split-requests`` requests without a deployment header
   to endpoint B at a 10 % share, counted by the deployment that answered, against the
   binomial bounds (mean +/- 4 sigma).
4. What a rollback costs: from a canary at 10 %, all traffic back to the old deployment
   and the new one deleted, timed directly and as the flow does it (a third model whose
   deployment is made to fail under the canary share).

Run it:
    python scripts/bench_rollout.py
    python scripts/bench_rollout.py --watch-seconds 20 --watch-requests 10
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STANDIN = "phi3-tiny-standin"


def _request(endpoint: str, epochs: int, lr: float, watch_s: float, watch_n: int):
    from flows.parameters import FinetuneRequest, RolloutParameters, TrainingParameters

    return FinetuneRequest(
        foundation_model=STANDIN, endpoint_name=endpoint, dataset_split_pc=3,
        rollout=RolloutParameters(strategy="canary", watch_seconds=watch_s,
                                  watch_requests=watch_n),
        training=TrainingParameters(num_train_epochs=epochs, learning_rate=lr,
                                    apply_model_specific_defaults=False),
    )


def _timed(module, name: str, spent: dict[str, float]) -> None:
    """Wrap ``module.name`` so its wall time is added to ``spent[name]``."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    setattr(module, name, wrapper)


def _wait(read, done, what: str, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not done(read()):
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not finish within {limit_s:.0f} s")
        time.sleep(0.2)


def direct_rollout(ws, endpoint: str, old: str, new: str, model, bodies, watch_s: float,
                   watch_n: int) -> dict[str, float]:
    """The rollout's workspace calls, made directly; returns seconds per phase."""
    from workspaces.interface import DeploymentSpec

    times: dict[str, float] = {}
    started = time.perf_counter()
    ws.set_traffic(endpoint, None, tags={"chatft-rollout-step": "deploying"})
    ws.begin_create_deployment(DeploymentSpec(
        endpoint_name=endpoint, name=new, model_id=model.id, instance_type="Local_CPU"))
    _wait(lambda: ws.get_deployment(endpoint, new),
          lambda d: d.provisioning_state == "Succeeded", "deployment")
    times["deploy"] = time.perf_counter() - started
    for body in bodies[:3]:
        ws.invoke(endpoint, body, deployment_name=new, caller="rollout")
    ws.set_traffic(endpoint, {old: 90, new: 10}, tags={"chatft-rollout-step": "canary"})
    watch_started = time.perf_counter()
    window_start = datetime.now(UTC)
    seen: Counter[str] = Counter()
    turn = 0
    while True:
        elapsed = time.perf_counter() - watch_started
        wanting = [n for n in (old, new) if seen[n] < watch_n]
        if (elapsed >= watch_s and not wanting) or elapsed >= watch_s * 3 + 60:
            break
        if not wanting:
            time.sleep(min(1.0, watch_s - elapsed))
            continue
        name = wanting[turn % len(wanting)]
        ws.invoke(endpoint, bodies[turn % len(bodies)], deployment_name=name, caller="rollout")
        seen[name] += 1
        turn += 1
    ws.get_endpoint_activity(endpoint, window_start, datetime.now(UTC))
    times["watch"] = time.perf_counter() - watch_started
    decide = time.perf_counter()
    ws.set_traffic(endpoint, {new: 100}, tags={"chatft-rollout-step": "promoted"})
    ws.set_model_stage(model.name, model.version, "production")
    ws.begin_delete_deployment(endpoint, old)
    _wait(lambda: ws.deletion_finished(endpoint, old), bool, "deletion")
    ws.set_traffic(endpoint, None, tags={"chatft-rollout-step": "done"})
    times["promote"] = time.perf_counter() - decide
    times["total"] = time.perf_counter() - started
    return times


def measure_split(ws, endpoint: str, new: str, body, count: int, share: int) -> None:
    answered: Counter[str] = Counter()
    started = time.perf_counter()
    for _ in range(count):
        response = ws.invoke(endpoint, body, caller="bench")
        answered[response.headers.get("azureml-model-deployment", "?")] += 1
    seconds = time.perf_counter() - started
    p = share / 100
    mean, sigma = count * p, math.sqrt(count * p * (1 - p))
    low, high = math.floor(mean - 4 * sigma), math.ceil(mean + 4 * sigma)
    got = answered[new]
    print(f"canary split: {got}/{count} requests to the new deployment at a {share} % share "
          f"({got / count:.1%}); binomial bounds {low}-{high}: "
          f"{'within' if low <= got <= high else 'OUTSIDE'}; {count / seconds:.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watch-seconds", type=float, default=10)
    parser.add_argument("--watch-requests", type=int, default=10)
    parser.add_argument("--split-requests", type=int, default=1000)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    import flows.finetune_and_deploy as flow_module
    import flows.rollout as rollout_module
    from flows.parameters import SMOKE_SCORING
    from tasks.endpoints import sample_requests
    from workspaces.interface import DeploymentSpec, EndpointSpec
    from workspaces.local import LocalWorkspace
    from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION, build_standin

    root = Path(tempfile.mkdtemp(prefix="bench-rollout-")) / "workspace"
    ws = LocalWorkspace(root)
    build_standin(ws.root / "catalog" / STANDIN_NAME / STANDIN_VERSION)
    os.environ["CHATFT_STATE_DIR"] = str(root)
    spent: dict[str, float] = {}
    _timed(flow_module, "release", spent)
    _timed(rollout_module, "_roll_back", spent)
    w_s, w_n = args.watch_seconds, args.watch_requests
    with prefect_test_harness(server_startup_timeout=120):
        try:
            first = flow_module.finetune_and_deploy(
                request=_request("bench-a", 1, 5e-4, w_s, w_n))
            spent.clear()
            second = flow_module.finetune_and_deploy(
                request=_request("bench-a", 2, 1e-3, w_s, w_n))
            flow_s = spent["release"]
            print(f"flow: {second.rollout} in {flow_s:.1f} s (release step inside the flow, "
                  f"watch {w_s:g} s / {w_n} requests per deployment)")

            # endpoint B: version 1 at 100 %, then the same rollout made directly
            v1 = ws.get_model(first.model_name, first.model_version)
            v2 = ws.get_model(second.model_name, second.model_version)
            ws.begin_create_endpoint(EndpointSpec(name="bench-b"))
            ws.begin_create_deployment(DeploymentSpec(
                endpoint_name="bench-b", name="blue", model_id=v1.id, instance_type="Local_CPU"))
            _wait(lambda: ws.get_deployment("bench-b", "blue"),
                  lambda d: d.provisioning_state == "Succeeded", "deployment v1")
            ws.set_traffic("bench-b", {"blue": 100})
            test_gen = next((root / "data").rglob("test_gen.jsonl"))
            bodies = sample_requests(str(test_gen), SMOKE_SCORING.model_dump(),
                                     list(range(5)))
            direct = direct_rollout(ws, "bench-b", "blue", "green", v2, bodies, w_s, w_n)
            print("direct: " + ", ".join(f"{k} {v:.1f} s" for k, v in direct.items()))
            overhead = flow_s - direct["total"]
            print(f"flow overhead for the rollout: {overhead:.1f} s "
                  f"({overhead / direct['total']:.1%} of {direct['total']:.1f} s; the flow "
                  "also reads metrics for the gate and writes artifacts, events and stages)")

            # the split, measured at a 10 % share (v2 at 100 % now; bring v1 back at 90 %)
            ws.begin_create_deployment(DeploymentSpec(
                endpoint_name="bench-b", name="blue", model_id=v1.id, instance_type="Local_CPU"))
            _wait(lambda: ws.get_deployment("bench-b", "blue"),
                  lambda d: d.provisioning_state == "Succeeded", "deployment v1")
            ws.set_traffic("bench-b", {"green": 90, "blue": 10})
            measure_split(ws, "bench-b", "blue", bodies[0], args.split_requests, 10)

            # a rollback, directly: all traffic to v2, v1 deleted
            started = time.perf_counter()
            ws.set_traffic("bench-b", {"green": 100})
            ws.begin_delete_deployment("bench-b", "blue")
            _wait(lambda: ws.deletion_finished("bench-b", "blue"), bool, "deletion")
            print(f"rollback, direct: {time.perf_counter() - started:.2f} s "
                  "(traffic back, new deployment deleted)")

            # a rollback, as the flow does it: a third model failing under its canary share
            stop = threading.Event()

            def drill() -> None:
                from workspaces.local.state import read_json

                config_file = root / "endpoints" / "bench-a" / "endpoint.json"
                while not stop.is_set():
                    tags = (read_json(config_file) or {}).get("tags", {})
                    if tags.get("chatft-rollout-step") == "canary":
                        ws.endpoints.set_simulation("bench-a", tags["chatft-rollout-to"],
                                                    {"status_code": 500, "body": "{}"})
                        return
                    time.sleep(0.05)

            thread = threading.Thread(target=drill)
            thread.start()
            try:
                third = flow_module.finetune_and_deploy(
                    request=_request("bench-a", 3, 5e-4, w_s, w_n))
            finally:
                stop.set()
                thread.join()
            print(f"rollback, flow: {third.rollout} in {spent.get('_roll_back', 0):.2f} s "
                  "(traffic back, stage, new deployment deleted, artifact, event); watch "
                  f"and all: release step {spent['release'] - flow_s:.1f} s")
        finally:
            for endpoint in ws.list_endpoints():
                ws.begin_delete_endpoint(endpoint.name)


if __name__ == "__main__":
    main()
