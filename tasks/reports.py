"""Artifacts and events a person or an automation reads from a run.

These are plain functions, called by the flows after each step, so that a re-run whose
steps came from the cache still documents what it used and created. Artifact keys are
stable, so the UI shows each one's history across runs. Keys and secrets never appear.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from workspaces.interface import (
    ComputeTarget,
    Endpoint,
    FinetuneJob,
    FoundationModel,
    JobMetrics,
    RegisteredModel,
    ScoreResponse,
)
from workspaces.ultrachat import PreparedDataset

EVENT_PREFIX = "chatft"


def _md_table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += ["| " + str(k) + " | " + str(v).replace("|", "\\|") + " |" for k, v in rows]
    return "\n".join(lines)


def report_foundation_model(model: FoundationModel, workspace_kind: str) -> None:
    tags = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(model.tags.items())) or "| | |"
    stand_in = (
        "\n> **Stand-in model**: tiny and locally built; its answers are not meaningful.\n"
        if model.tags.get("stand_in") == "true"
        else ""
    )
    create_markdown_artifact(
        key="foundation-model",
        description=f"Foundation model {model.name}",
        markdown=(
            f"## Foundation model ({workspace_kind} workspace)\n{stand_in}\n"
            + _md_table(
                [
                    ("name", model.name),
                    ("version", model.version),
                    ("id", f"`{model.id}`"),
                    ("description", model.description),
                ]
            )
            + "\n\n### Tags\n| tag | value |\n|---|---|\n"
            + tags
        ),
    )


def report_dataset(prepared: PreparedDataset, preview: list[dict[str, Any]]) -> None:
    create_table_artifact(
        key="train-sft-preview",
        table=preview,
        description=(
            f"First rows of train_sft.jsonl from {prepared.source} ({prepared.split_pc:g} % of "
            "every split; rows per split: "
            + ", ".join(f"{k} {v}" for k, v in prepared.rows.items())
            + ")"
        ),
    )


def report_finetune_submission(
    job: FinetuneJob, parameters: dict[str, str], compute: ComputeTarget, gpus: int, reused: bool
) -> None:
    rows = [
        ("job", job.name),
        ("display name", job.display_name),
        ("experiment", job.experiment_name),
        ("status", job.status),
        ("component version", job.component_version or "latest"),
        ("compute", f"{compute.name} ({compute.size}, {compute.tier})"),
        ("devices per node", gpus),
        ("submitted by this run", "no (reused)" if reused else "yes"),
    ]
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(parameters.items()))
    create_markdown_artifact(
        key="finetune-job",
        description=f"Fine-tune job {job.name}",
        markdown="## Fine-tune job\n"
        + _md_table(rows)
        + "\n\n### Parameters sent to chat_completion_pipeline\n| parameter | value |\n|---|---|\n"
        + params,
    )
    if job.studio_url:
        create_link_artifact(
            key="finetune-job-link",
            link=job.studio_url,
            link_text=f"Job {job.name}",
            description="Where the job's logs and outputs are",
        )


def report_metrics(job: FinetuneJob, metrics: JobMetrics) -> None:
    rows = [
        {"run": "finetune", "metric": k, "value": round(v, 6)}
        for k, v in sorted(metrics.finetune.items())
    ]
    rows += [
        {"run": "evaluation", "metric": k, "value": round(v, 6)}
        for k, v in sorted(metrics.evaluation.items())
    ]
    if metrics.unavailable:
        rows = [{"run": "-", "metric": "unavailable", "value": metrics.unavailable}]
    create_table_artifact(
        key="finetune-metrics",
        table=rows or [{"run": "-", "metric": "none reported", "value": ""}],
        description=f"Training and evaluation metrics of job {job.name}"
        + (f". Not read: {metrics.unavailable}" if metrics.unavailable else ""),
    )


def report_model(model: RegisteredModel) -> None:
    create_markdown_artifact(
        key="registered-model",
        description=f"Registered model {model.name}:{model.version}",
        markdown="## Registered model\n"
        + _md_table(
            [
                ("name", model.name),
                ("version", model.version),
                ("id", f"`{model.id}`"),
                ("from", f"`{model.path}`"),
                ("description", model.description),
            ]
            + [(f"tag `{k}`", v) for k, v in sorted(model.tags.items())]
        ),
    )


def report_endpoint(endpoint: Endpoint, deployment_name: str, reused: bool) -> None:
    deployment = next((d for d in endpoint.deployments if d.name == deployment_name), None)
    rows = [
        ("endpoint", endpoint.name),
        ("scoring URI", endpoint.scoring_uri),
        ("auth", f"{endpoint.auth_mode} (keys are not shown; fetch them from the workspace)"),
        ("traffic", json.dumps(endpoint.traffic)),
        ("created by this run", "no (reused)" if reused else "yes"),
    ]
    if deployment:
        rows += [
            ("deployment", deployment.name),
            ("model", f"`{deployment.model_id}`"),
            ("instances", f"{deployment.instance_count} x {deployment.instance_type}"),
        ]
    create_markdown_artifact(
        key="endpoint",
        description=f"Endpoint {endpoint.name}",
        markdown="## Online endpoint\n"
        + _md_table(rows)
        + "\n\nThe endpoint keeps serving (and, on Azure, billing) until deleted; the "
        "teardown_idle_endpoints flow deletes idle ones.",
    )
    if endpoint.scoring_uri:
        create_link_artifact(
            key="endpoint-link",
            link=endpoint.scoring_uri,
            link_text=f"{endpoint.name} scoring URI",
            description="Scoring URI (key auth; keys are not shown)",
        )


def report_score(body: dict[str, Any], response: ScoreResponse, reply: str) -> None:
    messages = body["input_data"]["input_string"][0]
    conversation = "\n".join(
        f"- **{m['role']}**: {str(m['content'])[:300]}" for m in messages
    )
    create_markdown_artifact(
        key="sample-score",
        description="The sample request and the endpoint's reply",
        markdown=(
            f"## Sample scoring request\nStatus **{response.status_code}** in "
            f"{response.latency_ms:.0f} ms\n\n### Reply\n> {reply[:2000] or '(empty)'}\n\n"
            f"### Conversation sent\n{conversation}\n\n"
            f"Parameters: `{json.dumps(body['input_data'].get('parameters', {}))}`\n\n"
            "### Raw response\n```\n" + response.body[:2000] + "\n```\n\n"
            "### Request body (sample_score.json)\n```json\n"
            + json.dumps(body, indent=2)[:4000] + "\n```"
        ),
    )


def name_run(name: str) -> None:
    """Rename the current flow run so run history says what it did."""
    import contextlib

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return
    # A name is a courtesy: never fail a run because renaming it failed.
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        client.update_flow_run(flow_run_id=run_id, name=name[:120])


def emit(
    event: str,
    resource_name: str,
    workspace_kind: str,
    payload: dict[str, Any],
    resource_kind: str = "endpoint",
    labels: dict[str, str] | None = None,
) -> None:
    """A Prefect event automations can match (resource id ``chatft.<kind>.<name>``).

    ``labels`` adds resource labels (string values) an automation can also match on.
    """
    emit_event(
        event=f"{EVENT_PREFIX}.{event}",
        resource={
            **(labels or {}),
            "prefect.resource.id": f"{EVENT_PREFIX}.{resource_kind}.{resource_name}",
            "prefect.resource.name": resource_name,
            "chatft.workspace": workspace_kind,
        },
        payload=payload,
    )
