"""A command-line re-run that nothing has changed since, answered without a flow run.

When ``python -m flows.finetune_and_deploy`` (``make demo``) leaves its model serving on
the embedded local workspace, the command line keeps a receipt of the run in the
workspace (``cli-receipts/``): the command as it was started (arguments, interpreter,
folder, the run settings in the environment), a digest of the project's code and of the
installed packages, the dataset source's fingerprint, a digest of the workspace's files as
the run left them, and the result it printed.

The same command started again reads the receipt before Prefect is imported. If all of
that is as the run left it and the endpoint still serves the run's deployment as the run
left it (healthy, all of its live traffic, its release record ``done``), the flow would
find everything made and serving and change nothing: six cached steps behind a temporary
Prefect server, about 9 s. So the command asks the endpoint the run's sample conversation
again, checks the reply against the scoring contract and that the workspace did not
change meanwhile, and prints the result with the new reply, in under a second. No flow
run is recorded for it.

Anything else runs the flow and the first line says why: no receipt, other arguments or
settings, changed code or packages, a changed dataset folder, a file of the workspace
made, changed or removed (a job, a model version, an endpoint, its deployments or
traffic, by a run or by hand), an endpoint that is not healthy, not wholly on the run's
deployment, or whose reply breaks the contract. A workspace block, a model from the
Hugging Face hub, or ``CHATFT_ALWAYS_RUN=1`` always run the flow. The receipt is dropped
when a run starts and kept again only when it ends with its model serving, so a run that
fails or refuses leaves none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocks import load_workspace
from flows.finetune_result import FLOW_NAME, FinetuneResult, already_serving_message, print_result
from workspaces.local.catalog import CATALOG
from workspaces.local.state import names_a_secret, write_json
from workspaces.release_state import RecordedRelease, live_shares
from workspaces.scoring import BadReply, read_reply
from workspaces.ultrachat import source_fingerprint

if TYPE_CHECKING:
    from flows.parameters import FinetuneRequest
    from workspaces.local import LocalWorkspace

ALWAYS_RUN_ENV = "CHATFT_ALWAYS_RUN"
RECEIPTS = "cli-receipts"  # in the workspace's state directory, left out of its digest
# Settings that can change what a run does are part of its command; of a credential
# (a name with TOKEN, KEY, PASSWORD...) or a URL, which may hold one, only the name.
SETTING_PREFIXES = ("CHATFT_", "PREFECT_", "HF_", "TRANSFORMERS_", "MLFLOW_", "AZURE_",
                    "PYTHON")
# The project's code a run executes, with the data it ships (the sample dataset).
PROJECT_DIR = Path(__file__).resolve().parents[1]
CODE = ("blocks", "flows", "tasks", "workspaces", "pyproject.toml")
# Outcomes after which the requested model serves its endpoint ("": a new endpoint).
SERVING = frozenset({"", "first-release", "promoted", "already-serving"})


def command_key(argv: Sequence[str]) -> str:
    """The command's identity: arguments, interpreter, folder and run settings."""
    settings = sorted(
        (name, "" if names_a_secret(name) or name.endswith("_URL") else value)
        for name, value in os.environ.items()
        if name.startswith(SETTING_PREFIXES) and name != ALWAYS_RUN_ENV
    )
    command = [list(argv), sys.executable, sys.version, os.getcwd(), settings]
    return hashlib.sha256(json.dumps(command).encode()).hexdigest()[:32]


def code_digest() -> str:
    """A digest of the project's code (every file's content) and of the installed
    packages (their names and versions, as their metadata folders are named)."""
    digest = hashlib.sha256()
    for top in CODE:
        path = PROJECT_DIR / top
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
        for file in files:
            digest.update(f"{file.relative_to(PROJECT_DIR)}\0".encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    for entry in sys.path:
        if entry.endswith("-packages") and os.path.isdir(entry):
            digest.update("\0".join(sorted(os.listdir(entry))).encode())
    return digest.hexdigest()


def _path(workspace: LocalWorkspace, key: str) -> Path:
    return workspace.root / RECEIPTS / f"{key}.json"


def forget_receipt(key: str, workspace_block: str) -> None:
    """When a run starts: whatever it does, the command's receipt no longer stands."""
    if not workspace_block:
        # A workspace that cannot be loaded (a bad setting) is the flow's to explain.
        with contextlib.suppress(Exception):
            _path(load_workspace(""), key).unlink(missing_ok=True)


def keep_receipt(key: str, workspace_block: str, request: FinetuneRequest,
                 result: FinetuneResult) -> None:
    """When a run ends: keep its receipt if it left its model serving on the embedded
    workspace and everything it read can be vouched for. Never fails the run: without a
    receipt the next run runs the flow, slower and never wrong."""
    if workspace_block or not (result.workspace.startswith("local:") and result.reply
                               and not result.endpoint_deleted and result.rollout in SERVING):
        return
    try:
        _keep(key, request, result)
    except Exception as exc:  # the run itself succeeded; its receipt is only a shortcut
        print(f"No receipt kept for the next run ({type(exc).__name__}: {exc})",
              file=sys.stderr)


def _keep(key: str, request: FinetuneRequest, result: FinetuneResult) -> None:
    workspace = load_workspace("")
    model = CATALOG.get(request.foundation_model or workspace.default_foundation_model)
    if model is None or model["source"] == "hub":
        return  # a hub model's availability is the hub's, not the workspace's
    if _serving_as_left(workspace, result) is None:
        write_receipt(workspace, key, request.dataset or workspace.default_dataset, result)


def write_receipt(workspace: LocalWorkspace, key: str, dataset: str,
                  result: FinetuneResult) -> None:
    """The receipt of ``result`` for the command ``key``: the code, ``dataset`` and the
    workspace as they are now (none when the workspace cannot be vouched for)."""
    state = workspace.settled_state(leave_out={RECEIPTS})
    if state is None:
        return
    write_json(_path(workspace, key), {
        "code": code_digest(),
        "dataset": [dataset, source_fingerprint(dataset)],
        "state": state,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "result": result.model_dump(mode="json"),
    })


def answer_if_unchanged(argv: Sequence[str]) -> bool:
    """Print the result of the command's last run, with a new reply of its endpoint, when
    nothing changed since; False (nothing printed but the reason) when the flow must run."""
    if os.environ.get(ALWAYS_RUN_ENV) == "1":
        return False
    try:
        workspace = load_workspace("")
        receipt = json.loads(_path(workspace, command_key(argv)).read_text())
        run = f"flow run '{receipt['result']['flow_run_name']}' of {receipt['finished_at']}"
    except Exception:  # no receipt, or a workspace the flow will explain (a bad setting)
        return False
    try:
        answered = _check(workspace, receipt)
    except Exception as exc:  # whatever is wrong, the flow finds it and says so
        answered = f"checking the receipt failed ({type(exc).__name__})"
    if isinstance(answered, str):
        print(f"Running the flow: {answered} since {run}.", file=sys.stderr)
        return False
    print(f"Nothing changed since {run}: the same command, code, packages, data and "
          f"workspace files; {answered.endpoint_name} serves {answered.deployment_name} as "
          f"that run left it and answered its sample again. No flow run was started "
          f"({ALWAYS_RUN_ENV}=1 runs the flow anyway).", file=sys.stderr)
    if answered.tuning_summary:
        print(answered.tuning_summary, file=sys.stderr)
    print_result(answered)
    return True


def _serving_as_left(workspace: LocalWorkspace, result: FinetuneResult) -> str | None:
    """None when the endpoint serves the run's deployment as the run left it, else what
    differs: healthy (its server proves it is the recorded one), all live traffic on the
    deployment, and a release record that says done on it."""
    name, deployment = result.endpoint_name, result.deployment_name
    endpoint = workspace.get_endpoint(name)
    if endpoint is None or not endpoint.healthy:
        return f"{name} is {'gone' if endpoint is None else 'not healthy'}"
    if live_shares(endpoint.traffic) != {deployment: 100}:
        return f"{name}'s traffic is {endpoint.traffic}, not all on {deployment}"
    recorded = RecordedRelease.of(endpoint.tags)
    if result.rollout and (recorded.step, recorded.to_deployment) != ("done", deployment):
        return f"{name}'s release record is at {recorded.step} for {recorded.to_deployment}"
    return None


def _check(workspace: LocalWorkspace, receipt: dict[str, Any]) -> FinetuneResult | str:
    """The result with its new reply, or what changed."""
    if receipt["code"] != code_digest():
        return "the project's code or the installed packages changed"
    dataset, fingerprint = receipt["dataset"]
    if source_fingerprint(dataset) != fingerprint:
        return f"the dataset {dataset!r} changed"
    if receipt["state"] != workspace.settled_state(leave_out={RECEIPTS}):
        return "the workspace changed"
    result = FinetuneResult.model_validate(receipt["result"])
    differs = _serving_as_left(workspace, result)
    if differs is not None:
        return differs
    body = json.loads(Path(result.sample_request_file).read_text())
    response = workspace.invoke(result.endpoint_name, body,
                                deployment_name=result.deployment_name, caller=FLOW_NAME)
    if response.status_code != 200:
        return f"{result.endpoint_name} answered {response.status_code}"
    try:
        reply = read_reply(response.body)
    except BadReply as exc:
        return f"{result.endpoint_name}'s reply breaks the scoring contract ({exc.kind})"
    # A person or another run may have changed the endpoint while it was asked.
    if receipt["state"] != workspace.settled_state(leave_out={RECEIPTS}):
        return "the workspace changed"
    update: dict[str, Any] = {"reply": reply, "job_reused": True, "endpoint_reused": True}
    if result.rollout:
        update |= {"rollout": "already-serving", "rollout_message": already_serving_message(
            result.model_name, result.model_version, result.endpoint_name,
            result.deployment_name)}
    return result.model_copy(update=update)
