"""Artifacts and events a person or an automation reads from a run.

These are plain functions, called by the flows after each step, so that a re-run whose
steps came from the cache still documents what it used and created. Artifact keys are
stable, so the UI shows each one's history across runs. Keys and secrets never appear.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID

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
from workspaces.pipeline_inputs import InputCheck
from workspaces.scoring import conversation, normalize_answer
from workspaces.ultrachat import PreparedDataset

EVENT_PREFIX = "chatft"


def _md_table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += ["| " + str(k) + " | " + str(v).replace("|", "\\|") + " |" for k, v in rows]
    return "\n".join(lines)


def report_foundation_model(model: FoundationModel, workspace_kind: str) -> None:
    """Artifact ``foundation-model``: the base model, its id and every tag that steers the run."""
    tags = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(model.tags.items())) or "| | |"
    stand_in = (
        "\n> **Stand-in model** (for fast tests): tiny and locally built; its answers are not "
        "meaningful.\n"
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
    """Artifact ``train-sft-preview``: the first rows of train_sft, as the walkthrough shows."""
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


def is_web_link(url: str | None) -> bool:
    """Whether a browser opens it from the UI (a file:// link does nothing there)."""
    return bool(url) and urlparse(url).scheme in ("http", "https")


def link_or_path(url: str | None) -> str:
    """A web link as is; a file:// URI as the plain path it names."""
    if not url or is_web_link(url):
        return url or ""
    parsed = urlparse(url)
    return f"`{unquote(parsed.path)}`" if parsed.scheme == "file" else f"`{url}`"


def _finetune_job_markdown(
    job: FinetuneJob, parameters: dict[str, str], compute: ComputeTarget, gpus: int, reused: bool
) -> str:
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
    if job.studio_url:
        rows.append(("logs and outputs", link_or_path(job.studio_url)))
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(parameters.items()))
    return (
        "## Fine-tune job\n"
        + _md_table(rows)
        + "\n\n### Parameters sent to chat_completion_pipeline\n| parameter | value |\n|---|---|\n"
        + params
    )


def report_finetune_submission(
    job: FinetuneJob, parameters: dict[str, str], compute: ComputeTarget, gpus: int, reused: bool
) -> UUID:
    """The ``finetune-job`` artifact at submission; its id, for ``report_finetune_outcome``."""
    artifact_id = create_markdown_artifact(
        key="finetune-job",
        description=f"Fine-tune job {job.name}",
        markdown=_finetune_job_markdown(job, parameters, compute, gpus, reused),
    )
    if is_web_link(job.studio_url):
        create_link_artifact(
            key="finetune-job-link",
            link=job.studio_url,
            link_text=f"Job {job.name}",
            description="Where the job's logs and outputs are",
        )
    return artifact_id


def report_finetune_outcome(
    artifact_id: UUID, job: FinetuneJob, parameters: dict[str, str], compute: ComputeTarget,
    gpus: int, reused: bool,
) -> None:
    """Rewrite the ``finetune-job`` artifact with the job's final status (not "Queued")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    markdown = _finetune_job_markdown(job, parameters, compute, gpus, reused)
    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id, ArtifactUpdate(data=markdown))


# Evaluation metrics shown side by side for the base and the tuned model.
COMPARED = (
    ("eval_loss", "test_sft loss"),
    ("perplexity", "test_sft perplexity"),
    ("exact_answer_rate", "exact-answer rate (held-out test_gen)"),
)


def tuning_summary(metrics: JobMetrics) -> str:
    """One sentence saying what tuning changed, from the job's before/after evaluation."""
    evaluation = metrics.evaluation
    if "eval_loss" not in evaluation:
        return "The job reported no evaluation, so what tuning changed is not known."
    if "base_eval_loss" not in evaluation:
        return f"After tuning, test_sft loss is {evaluation['eval_loss']:.3f} (no base figure)."
    sentence = (
        f"Tuning changed test_sft loss from {evaluation['base_eval_loss']:.3f} to "
        f"{evaluation['eval_loss']:.3f} (perplexity {evaluation['base_perplexity']:.1f} -> "
        f"{evaluation['perplexity']:.1f})"
    )
    questions = int(evaluation.get("generation_questions", 0))
    if questions:
        sentence += (
            f" and the exact-answer rate on {questions} held-out test_gen questions from "
            f"{evaluation['base_exact_answer_rate']:.0%} to {evaluation['exact_answer_rate']:.0%}"
        )
    return sentence + "."


def report_metrics(job: FinetuneJob, metrics: JobMetrics) -> str:
    """The finetune-metrics artifact (base and tuned columns); returns the summary sentence."""
    evaluation = metrics.evaluation
    compared = [
        f"| {label} | {_figure(evaluation.get('base_' + key))} | {_figure(evaluation.get(key))} |"
        for key, label in COMPARED
        if key in evaluation
    ]
    training = [f"| `{k}` | {_figure(v)} |" for k, v in sorted(metrics.finetune.items())]
    summary = tuning_summary(metrics)
    if metrics.unavailable:
        summary = f"The job's metrics could not be read ({metrics.unavailable})."
    examples = [
        f"| {str(s['messages'][-1]['content'])[:80]} | {s['reference'][:80]} | "
        f"{s['base_reply'][:120]} | {s['tuned_reply'][:120]} |".replace("\n", " ")
        for s in metrics.samples[:5]
    ]
    markdown = f"## Evaluation of job {job.name}\n\n**{summary}**\n\n"
    if compared:
        markdown += "| metric | base model | tuned model |\n|---|---|---|\n"
        markdown += "\n".join(compared) + "\n\n"
    if examples:
        markdown += (
            "### Held-out questions (greedy replies)\n"
            "| question | reference | base model | tuned model |\n|---|---|---|---|\n"
            + "\n".join(examples) + "\n\n"
        )
    markdown += "### Training\n| metric | value |\n|---|---|\n" + (
        "\n".join(training) or "| none reported | |"
    )
    create_markdown_artifact(
        key="finetune-metrics",
        markdown=markdown,
        description=f"Base against tuned model, and training metrics, of job {job.name}",
    )
    return summary


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def report_model(model: RegisteredModel) -> None:
    """Artifact ``registered-model``: the version, its id and its lineage tags."""
    create_markdown_artifact(
        key="registered-model",
        description=f"Registered model {model.name}:{model.version}",
        markdown="## Registered model\n"
        + _md_table(
            [
                ("name", model.name),
                ("version", _version_text(model)),
                ("id", f"`{model.id}`"),
                ("from", f"`{model.path}`"),
                ("description", model.description),
            ]
            + [(f"tag `{k}`", v) for k, v in sorted(model.tags.items())]
        ),
    )


def _version_text(model: RegisteredModel) -> str:
    """The request's version, and MLflow's own number where the registry numbers itself.

    MLflow numbers a model's versions 1, 2, ...; the project's version (the request's
    suffix, the same on Azure) is kept beside it, so the id ending in MLflow's number and
    the version shown here would otherwise seem to disagree.
    """
    mlflow_version = model.tags.get("mlflow-version")
    if mlflow_version and mlflow_version != model.version:
        return (f"{model.version} (this request's version; the MLflow registry numbers it "
                f"{mlflow_version}, as in the id `{model.id}`)")
    return model.version


def report_endpoint(endpoint: Endpoint, deployment_name: str, reused: bool) -> None:
    """Artifact ``endpoint``: the scoring URI, traffic and the deployment (keys never shown)."""
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
    if is_web_link(endpoint.scoring_uri):
        create_link_artifact(
            key="endpoint-link",
            link=endpoint.scoring_uri,
            link_text=f"{endpoint.name} scoring URI",
            description="Scoring URI (key auth; keys are not shown)",
        )


def evaluated_sample(metrics: JobMetrics, body: dict[str, Any]) -> dict[str, Any] | None:
    """The job's evaluation of the body's question (reference, base and tuned replies)."""
    messages = conversation(body)
    return next((s for s in metrics.samples if s.get("messages") == messages), None)


def report_score(
    body: dict[str, Any], response: ScoreResponse, reply: str,
    evaluated: dict[str, Any] | None = None,
) -> None:
    """Artifact ``sample-score``: the question, the endpoint's reply, and what the job's
    evaluation recorded for it (the reference, the base and the tuned model's replies)."""
    messages = conversation(body)
    question = messages[-1]["content"] if messages else ""
    earlier = "\n".join(
        f"- **{m['role']}**: {str(m['content'])[:300]}" for m in messages[:-1]
    )

    def quoted(text: str | None) -> str:
        return "\n".join(f"> {line}" for line in ((text or "")[:2000] or "(empty)").splitlines())

    if evaluated is not None:
        # The body asks a question whose replies differ whenever the job has one
        # (tasks/endpoints.py::telling_question); equal replies here mean it had none.
        differ = normalize_answer(evaluated.get("base_reply") or "") != normalize_answer(
            evaluated.get("tuned_reply") or "")
        job = (
            "### The job's evaluation of this question (greedy, same code for both)\n"
            f"Reference answer:\n{quoted(evaluated.get('reference'))}\n\n"
            f"Base model:\n{quoted(evaluated.get('base_reply'))}\n\n"
            f"Tuned model:\n{quoted(evaluated.get('tuned_reply'))}\n\n"
            + ("The question was chosen among those whose base and tuned replies differ, so "
               "this shows what tuning changed." if differ else
               "On no held-out question did the base and tuned models answer differently, "
               "so this question was drawn at random.")
        )
    else:
        job = ("### Base model\n(not recorded: the job did not ask the base model this "
               "question)")
    create_markdown_artifact(
        key="sample-score",
        description="The sample question, the endpoint's reply, and the base and tuned "
                    "models' replies from the job's evaluation",
        markdown=(
            f"## Sample scoring request\n\n### Question\n> {question[:1000]}\n\n"
            + (f"Earlier turns:\n{earlier}\n\n" if earlier else "")
            + f"### The endpoint (tuned model, sampled), status **{response.status_code}** "
            f"in {response.latency_ms:.0f} ms\n{quoted(reply)}\n\n"
            f"{job}\n\n"
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


def report_pipeline_inputs(result: InputCheck) -> None:
    """What the fine-tune job will send, checked against the component's interface."""
    refused = {p.split(":", 1)[0] for p in result.problems}
    rows = []
    for item in result.checked:
        if item.field in refused:
            verdict = "refused"
        elif item.name in result.ignored:
            verdict = "ignored: " + result.ignored[item.name]
        else:
            verdict = "ok"
        if item.replaced:
            verdict += f"; replaced the request's {item.replaced}"
        value = "(after compute)" if item.value is None else f"`{item.value}`".replace("|", "\\|")
        rows.append(f"| `{item.name}` | {value} | {item.field} | {verdict} |")
    problems = "".join(f"\n- {p}" for p in result.problems)
    replacements = "".join(
        f"\n- `{item.name}`: the request's {item.replaced} was replaced by `{item.value}`"
        for item in result.checked if item.replaced
    )
    create_markdown_artifact(
        key="pipeline-inputs",
        description=f"Fine-tune inputs checked against {result.interface}",
        markdown=(
            f"## Fine-tune inputs checked against {result.interface}\n"
            + (f"\n**Refused:**{problems}\n" if problems else "\nAll inputs fit.\n")
            + (f"\n**Replaced by the model's model_specific_defaults** (turn off "
               f"'Use the model's recommended settings' to keep yours):{replacements}\n"
               if replacements else "")
            + "\n| input | value | set by | verdict |\n|---|---|---|---|\n"
            + "\n".join(rows)
        ),
    )
