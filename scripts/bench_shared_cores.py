"""Benchmark a local fine-tune beside an endpoint that serves one steady client.

Prints figures, asserts nothing. In one local workspace (SmolLM2-135M-Instruct, the
shipped sample, one epoch):

1. the endpoint's median reply with no training (one client, one request after another);
2. a fine-tune job's seconds per training step on otherwise idle cores;
3. the same job again while one client calls the endpoint continuously: its seconds per
   step and the endpoint's median reply meanwhile.

It prints the training speed beside the endpoint against its idle speed, and the
endpoint's median reply during training against its idle median. ``--threads N`` fixes every
process's math threads (``CHATFT_THREADS``) instead of the shared budget; with N equal to
the cores it shows what happens when each process takes them all.

Run: ``python scripts/bench_shared_cores.py [--state-dir DIR] [--threads N]``. The state
directory keeps the converted model between runs (default: a folder under /tmp).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ENDPOINT = "bench-cores"
MAX_NEW_TOKENS = 20
IDLE_REQUESTS = 10


def workspace_with_model(state: Path):  # noqa: ANN201
    """The workspace, its SmolLM2 weights, the sample data and the base model deployed."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workspaces import compute_provisioning
    from workspaces.interface import DeploymentSpec, EndpointSpec
    from workspaces.local import LocalWorkspace
    from workspaces.ultrachat import prepare_dataset

    ws = LocalWorkspace(state)
    model = ws.get_foundation_model(ws.default_foundation_model)
    weights = ws.prepare_foundation_model(model, print)
    compute_provisioning.ensure_compute(ws, "local-cpu", "Local_CPU", 1)
    data = prepare_dataset("sample", 5, state / "download")
    saved = state / "bench" / "base-mlflow-model"
    if not (saved / "MLmodel").exists():
        mlflow.transformers.save_model(
            transformers_model={"model": AutoModelForCausalLM.from_pretrained(weights),
                                "tokenizer": AutoTokenizer.from_pretrained(weights)},
            path=str(saved), task="text-generation", pip_requirements=["transformers"])
    registered = ws.registry.register("bench-cores-base", str(int(time.time())), str(saved),
                                      None, "SmolLM2 base, for the shared-cores benchmark", {})
    ws.begin_create_endpoint(EndpointSpec(name=ENDPOINT, description="benchmark", tags={}))
    while ws.get_endpoint(ENDPOINT).provisioning_state == "Creating":
        time.sleep(0.3)
    ws.begin_create_deployment(DeploymentSpec(
        endpoint_name=ENDPOINT, name="base", model_id=registered.id,
        instance_type="Local_CPU", instance_count=1, tags={}))
    while (d := ws.get_deployment(ENDPOINT, "base")).provisioning_state == "Creating":
        time.sleep(0.3)
    if d.provisioning_state != "Succeeded":
        raise SystemExit(f"the benchmark's deployment failed: {d.error}")
    ws.set_traffic(ENDPOINT, {"base": 100})
    return ws, model, data


def ask(ws, messages: list[dict[str, str]]) -> float:  # noqa: ANN001
    """One greedy request to the endpoint; its latency in seconds."""
    from workspaces.scoring import build_body, read_reply

    body = build_body(messages, {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False})
    started = time.perf_counter()
    read_reply(ws.invoke(ENDPOINT, body, "base", caller="benchmark", timeout_s=600).body)
    return time.perf_counter() - started


def train(ws, model, data, label: str) -> dict[str, float]:  # noqa: ANN001
    """One epoch of our fine-tune job; its training metrics."""
    from flows.parameters import FinetuneRequest
    from workspaces.interface import FinetuneJobSpec
    from workspaces.model_tags import model_specific_defaults

    parameters = {**FinetuneRequest().training.as_component_inputs(),
                  **model_specific_defaults(model), "num_train_epochs": "1"}
    name = f"bench-cores-{label}-{int(time.time())}"
    ws.submit_finetune_job(FinetuneJobSpec(
        name=name, display_name=name, experiment_name="bench-shared-cores",
        foundation_model=model, compute="local-cpu", train_file=data.files["train_sft"],
        test_file=data.files["test_sft"], test_gen_file=data.files["test_gen"],
        gpus_per_node=0, parameters=parameters))
    training_from = training_to = None
    while not (job := ws.get_job(name)).is_terminal:
        if job.current_step == "finetune" and training_from is None:
            training_from = time.time()
        if job.current_step not in (None, "finetune") and training_from and not training_to:
            training_to = time.time()
        time.sleep(0.5)
    if job.status != "Completed":
        raise SystemExit(f"job {name} ended {job.status}: {job.error}")
    metrics = dict(ws.get_job_metrics(name).finetune)
    metrics["window"] = (training_from or 0.0, training_to or time.time())
    return metrics


def main() -> None:
    from workspaces.local import thread_budget
    from workspaces.scoring import up_to_last_question
    from workspaces.ultrachat import SAMPLE_DIR, read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "chatft-bench-cores")
    parser.add_argument("--threads", type=int, default=None,
                        help="fixed math threads per process (default: the shared budget)")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ[thread_budget.FIXED_ENV] = str(args.threads)
    questions = [up_to_last_question(r["messages"])
                 for r in read_jsonl(SAMPLE_DIR / "test_gen.jsonl")]
    ws, model, data = workspace_with_model(args.state_dir.resolve())
    try:
        ask(ws, questions[0])  # warm-up
        idle_replies = [ask(ws, questions[i % len(questions)]) for i in range(IDLE_REQUESTS)]
        alone = train(ws, model, data, "idle")

        replies: list[tuple[float, float]] = []
        stop = threading.Event()

        def client() -> None:
            i = 0
            while not stop.is_set():
                latency = ask(ws, questions[i % len(questions)])
                replies.append((time.time(), latency))
                i += 1

        caller = threading.Thread(target=client, daemon=True)
        caller.start()
        time.sleep(5)  # the client calls steadily before the job starts
        beside = train(ws, model, data, "beside")
        stop.set()
        caller.join()
    finally:
        ws.begin_delete_endpoint(ENDPOINT)
    start, end = beside["window"]
    during = [latency for at, latency in replies if start <= at <= end]
    step_alone = alone["train_runtime"] / alone["train_steps"]
    step_beside = beside["train_runtime"] / beside["train_steps"]
    idle_median = statistics.median(idle_replies)
    busy_median = statistics.median(during) if during else float("nan")
    budget = f"CHATFT_THREADS={args.threads}" if args.threads else "shared budget"
    print(f"\ncores {thread_budget.available_cores()}, {budget}, "
          f"{int(alone['train_steps'])} steps per job, max_new_tokens {MAX_NEW_TOKENS}")
    print(f"training alone:        {step_alone:.2f} s/step")
    print(f"training beside:       {step_beside:.2f} s/step   speed ratio "
          f"{step_alone / step_beside:.2f}")
    print(f"endpoint idle:         median {idle_median:.2f} s ({len(idle_replies)} replies)")
    print(f"endpoint during train: median {busy_median:.2f} s ({len(during)} replies), "
          f"{busy_median / idle_median:.2f}x idle")


if __name__ == "__main__":
    main()
