"""Benchmark finetune_and_deploy on the local workspace; prints figures, asserts nothing.

Prints: first-run time, cached re-run time and their ratio, training tokens/s, and the
flow's overhead against calling the same workspace steps directly without Prefect. It
runs the 2-layer stand-in, so the figures are about the procedure, not the model
(``scripts/bench_training.py`` and ``scripts/bench_serving.py`` measure SmolLM2).
Each measurement uses a fresh state directory under a temporary folder; endpoints it
starts are deleted at the end.

Run: ``make bench`` (or ``python scripts/bench_finetune_and_deploy.py``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workspaces.interface import DeploymentSpec, EndpointSpec
from workspaces.local.catalog import STANDIN_NAME  # noqa: E402


def run_flow(state: Path) -> tuple[float, float, dict]:
    from prefect.testing.utilities import prefect_test_harness

    from flows.finetune_and_deploy import finetune_and_deploy
    from flows.parameters import FinetuneRequest

    os.environ["CHATFT_STATE_DIR"] = str(state)
    request = FinetuneRequest(foundation_model=STANDIN_NAME, download_dir=str(state / "download"))
    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        first = finetune_and_deploy(request=request)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        finetune_and_deploy(request=request)
        rerun_s = time.perf_counter() - started
    from workspaces.local import LocalWorkspace

    metrics = LocalWorkspace(state).get_job_metrics(first.job_name)
    return first_s, rerun_s, metrics.finetune


def run_direct(state: Path, model_name: str = STANDIN_NAME) -> float:
    """The same steps straight on the workspace, no Prefect."""
    from flows.parameters import FinetuneRequest
    from workspaces import compute_provisioning
    from workspaces.interface import FinetuneJobSpec
    from workspaces.local import LocalWorkspace
    from workspaces.model_tags import model_specific_defaults
    from workspaces.naming import finetune_display_name
    from workspaces.ultrachat import prepare_dataset

    started = time.perf_counter()
    ws = LocalWorkspace(state)
    model = ws.get_foundation_model(model_name)
    ws.prepare_foundation_model(model, print)
    params = {**FinetuneRequest().training.as_component_inputs(), **model_specific_defaults(model)}
    compute_provisioning.ensure_compute(ws, "local-cpu", "Local_CPU", 1)
    data = prepare_dataset("sample", 5, state / "download")
    spec = FinetuneJobSpec(
        name="bench-direct",
        display_name=finetune_display_name(model.name, params, 1, 1),
        experiment_name="bench",
        foundation_model=model,
        compute="local-cpu",
        train_file=data.files["train_sft"],
        test_file=data.files["test_sft"],
        # as the flow gives it: the job also scores base and tuned model on these questions
        test_gen_file=data.files.get("test_gen"),
        gpus_per_node=1,
        parameters=params,
    )
    ws.submit_finetune_job(spec)
    while not (job := ws.get_job("bench-direct")).is_terminal:
        time.sleep(0.5)
    ws.get_job_metrics(job.name)
    registered = ws.register_model("bench", "1", job.name, "bench", {})
    ws.begin_create_endpoint(EndpointSpec(name="bench-direct", description="bench", tags={}))
    while ws.get_endpoint("bench-direct").provisioning_state == "Creating":
        time.sleep(0.3)
    ws.begin_create_deployment(DeploymentSpec(
        endpoint_name="bench-direct", name="demo", model_id=registered.id,
        instance_type="Local_CPU", instance_count=1, tags={},
    ))
    while ws.get_deployment("bench-direct", "demo").provisioning_state == "Creating":
        time.sleep(0.3)
    ws.set_traffic("bench-direct", {"demo": 100})
    body = {
        "input_data": {
            "input_string": [[{"role": "user", "content": "What is 2 plus 2?"}]],
            "parameters": {"max_new_tokens": 200},
        },
        "params": {},
    }
    ws.invoke("bench-direct", body, "demo")
    return time.perf_counter() - started


def main() -> None:
    from workspaces.local import LocalWorkspace
    from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION, build_standin

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Build the stand-in once and share it, so both measurements start equal.
        standin = build_standin(root / "shared-catalog" / STANDIN_NAME / STANDIN_VERSION)
        for name in ("flow", "direct"):
            target = root / name / "catalog" / STANDIN_NAME
            target.mkdir(parents=True)
            os.symlink(standin, target / STANDIN_VERSION)
        try:
            first_s, rerun_s, finetune = run_flow(root / "flow")
            direct_s = run_direct(root / "direct")
        finally:
            for name in ("flow", "direct"):
                ws = LocalWorkspace(root / name)
                for endpoint in ws.list_endpoints():
                    ws.begin_delete_endpoint(endpoint.name)
    print(f"first run (flow, stand-in already built): {first_s:8.1f} s")
    print(f"cached re-run:                            {rerun_s:8.1f} s")
    print(f"first / re-run ratio:                     {first_s / rerun_s:8.1f} x")
    tokens_per_s = finetune.get("train_tokens_per_second", 0)
    print(f"training tokens/s:                        {tokens_per_s:8.0f}")
    print(f"same steps without Prefect:               {direct_s:8.1f} s")
    print(
        f"flow overhead vs direct:                  {first_s - direct_s:8.1f} s "
        f"({(first_s - direct_s) / direct_s * 100:.0f} %)"
    )


if __name__ == "__main__":
    main()
