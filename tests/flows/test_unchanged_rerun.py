"""A command-line re-run that nothing changed since answers without a flow run; any change
(code, workspace, a hand edit, an endpoint that does not serve as it was left) runs the
flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows import unchanged_rerun
from flows.finetune_result import FinetuneResult
from flows.parameters import FinetuneRequest
from flows.unchanged_rerun import (
    ALWAYS_RUN_ENV,
    RECEIPTS,
    answer_if_unchanged,
    code_digest,
    command_key,
    forget_receipt,
    keep_receipt,
)
from tests.helpers import PROJECT_DIR
from workspaces.local import LocalWorkspace

STANDIN = "phi3-tiny-standin"


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "flows.finetune_and_deploy", *argv],
                          cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def flow_runs() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.count_flow_runs()


def receipts(workspace: LocalWorkspace) -> list[dict]:
    folder = workspace.root / RECEIPTS
    return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []


def own_requests(workspace: LocalWorkspace, endpoint: str) -> int:
    log = workspace.root / "endpoints" / endpoint / "requests.jsonl"
    return sum(json.loads(line).get("caller") == "finetune-and-deploy"
               for line in log.read_text().splitlines())


@pytest.mark.slow
def test_an_unchanged_rerun_answers_without_a_flow_run_and_a_hand_edit_runs_the_flow(
    prefect_server, workspace, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    endpoint = "unchanged-rerun"
    argv = ["--foundation-model", STANDIN, "--training.num-train-epochs", "1",
            "--dataset-split-pc", "3", "--download-dir", str(tmp_path / "dl"),
            "--endpoint-name", endpoint, "--rollout.strategy", "canary"]
    env = {k: v for k, v in os.environ.items() if k != ALWAYS_RUN_ENV}
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "CHATFT_STATE_DIR": str(workspace.root)}

    runs = flow_runs()
    first = run_cli(argv, env)
    assert "Release:     first-release" in first.stdout
    assert flow_runs() == runs + 1
    (made,) = receipts(workspace)
    assert made["result"]["flow_run_id"] and made["result"]["endpoint_name"] == endpoint

    # The premise: a whole run of the same command on the workspace the first run left
    # changes nothing the receipt covers.
    forced = run_cli(argv, env | {ALWAYS_RUN_ENV: "1"})
    assert "Beginning flow run" in forced.stderr and flow_runs() == runs + 2
    assert "Release:     already-serving" in forced.stdout
    (rerun,) = receipts(workspace)
    assert (rerun["state"], rerun["code"], rerun["dataset"]) == (
        made["state"], made["code"], made["dataset"])

    asked = own_requests(workspace, endpoint)
    unchanged = run_cli(argv, env)
    assert flow_runs() == runs + 2
    assert "Beginning flow run" not in unchanged.stderr
    assert (f"Nothing changed since flow run '{rerun['result']['flow_run_name']}'"
            in unchanged.stderr)
    assert "Release:     already-serving" in unchanged.stdout
    assert "Reply:       '" in unchanged.stdout
    # the endpoint was really asked, as the flow's own caller, and nothing else changed
    assert own_requests(workspace, endpoint) == asked + 1
    assert receipts(workspace) == [rerun]

    # Runs that do not leave their model serving as asked keep no receipt.
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    result = FinetuneResult.model_validate(rerun["result"])
    request = FinetuneRequest(foundation_model=STANDIN)
    for key, block, change in [
        ("rejected", "", {"rollout": "rejected"}), ("held", "", {"rollout": "held"}),
        ("deleted", "", {"endpoint_deleted": True}), ("no-reply", "", {"reply": ""}),
        ("other-deployment", "", {"deployment_name": "not-serving"}),
        ("block", "local-workspace/team", {}),
    ]:
        keep_receipt(key, block, request, result.model_copy(update=change))
        assert not (workspace.root / RECEIPTS / f"{key}.json").exists(), key
    keep_receipt("hub", "", FinetuneRequest(foundation_model="org/some-model"), result)
    assert not (workspace.root / RECEIPTS / "hub.json").exists()

    # A person deletes the endpoint by hand: the next run is the flow, which makes it again.
    workspace.begin_delete_endpoint(endpoint)
    again = run_cli(argv, env)
    assert "Running the flow: the workspace changed" in again.stderr
    assert flow_runs() == runs + 3
    assert "Release:     first-release" in again.stdout
    assert workspace.get_endpoint(endpoint).healthy


def test_no_receipt_other_arguments_or_always_run_run_the_flow(workspace, monkeypatch, capsys):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    monkeypatch.delenv(ALWAYS_RUN_ENV, raising=False)
    argv = ["--endpoint-name", "a"]
    assert not answer_if_unchanged(argv)
    write_receipt(workspace, argv, "a")
    monkeypatch.setenv(ALWAYS_RUN_ENV, "1")
    assert not answer_if_unchanged(argv)
    assert capsys.readouterr() == ("", "")  # no receipt read, nothing to say

    key = command_key(argv)
    assert command_key(["--endpoint-name", "b"]) != key
    monkeypatch.setenv("CHATFT_THREADS", "1")  # a setting that changes a run
    assert command_key(argv) != key
    # a credential's name is part of the command, never its value
    monkeypatch.setenv("HF_TOKEN", "hf_first")
    with_token = command_key(argv)
    monkeypatch.setenv("HF_TOKEN", "hf_second")
    assert command_key(argv) == with_token


def test_a_receipt_whose_endpoint_is_gone_runs_the_flow(workspace, monkeypatch, capsys):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    monkeypatch.delenv(ALWAYS_RUN_ENV, raising=False)
    argv = ["--endpoint-name", "gone"]
    write_receipt(workspace, argv, "gone")

    assert not answer_if_unchanged(argv)
    out, err = capsys.readouterr()
    assert out == ""
    (receipt,) = receipts(workspace)
    assert err == ("Running the flow: gone is gone since flow run 'some-run' of "
                   f"{receipt['finished_at']}.\n")


def test_a_changed_workspace_file_runs_the_flow_and_logs_do_not(workspace, monkeypatch, capsys):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    monkeypatch.delenv(ALWAYS_RUN_ENV, raising=False)
    argv = ["--endpoint-name", "gone"]
    served = workspace.root / "endpoints" / "gone"
    served.mkdir(parents=True)
    write_receipt(workspace, argv, "gone")
    settled = workspace.settled_state(leave_out={RECEIPTS})

    # what a serving endpoint writes while nothing changes is left out, at its own place
    (served / "requests.jsonl").write_text("{}\n")
    (served / "server.log").write_text("INFO started\n")
    (workspace.root / "threads").mkdir()
    (workspace.root / "threads" / "endpoint.1").touch()
    assert workspace.settled_state(leave_out={RECEIPTS}) == settled

    # a file of that name elsewhere, a record made, or a mode changed is a change
    for change in (lambda: (workspace.root / "jobs").mkdir(exist_ok=True) or
                   (workspace.root / "jobs" / "server.log").write_text("x"),
                   lambda: (served / "deployment-d.json").write_text("{}"),
                   lambda: os.chmod(served / "deployment-d.json", 0o600)):
        change()
        assert workspace.settled_state(leave_out={RECEIPTS}) != settled
        settled = workspace.settled_state(leave_out={RECEIPTS})
    answer_if_unchanged(argv)
    assert "Running the flow: the workspace changed since" in capsys.readouterr().err

    # a folder behind a symbolic link cannot be vouched for
    (workspace.root / "linked").symlink_to(served)
    assert workspace.settled_state() is None


def test_the_code_digest_follows_the_code_not_its_bytecode(tmp_path, monkeypatch):
    (tmp_path / "flows" / "__pycache__").mkdir(parents=True)
    (tmp_path / "flows" / "a.py").write_text("A = 1\n")
    monkeypatch.setattr(unchanged_rerun, "PROJECT_DIR", tmp_path)
    monkeypatch.setattr(unchanged_rerun, "CODE", ("flows",))
    before = code_digest()
    (tmp_path / "flows" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert code_digest() == before
    (tmp_path / "flows" / "a.py").write_text("A = 2\n")
    assert code_digest() != before


def write_receipt(workspace: LocalWorkspace, argv: list[str], endpoint: str) -> None:
    """A receipt as a run that left ``endpoint`` serving keeps it, of the workspace now."""
    sample = workspace.root / "data" / "requests" / "r1" / "sample_score.json"
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text(json.dumps({"input_data": {"input_string": [
        {"role": "user", "content": "Hi"}], "parameters": {}}}))
    result = FinetuneResult(
        workspace=workspace.cache_scope, request_id="r1", suffix="1", job_name="j",
        job_reused=False, model_name="m", model_version="1", endpoint_name=endpoint,
        scoring_uri="http://127.0.0.1:1/score", endpoint_reused=False, deployment_name="d",
        reply="Hello", sample_request_file=str(sample), rollout="first-release",
        flow_run_id="f", flow_run_name="some-run",
    )
    unchanged_rerun.write_receipt(workspace, command_key(argv), "sample", result)


def test_a_workspace_that_cannot_load_is_left_to_the_flow_to_explain(workspace, monkeypatch):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    argv = ["--endpoint-name", "a"]
    write_receipt(workspace, argv, "a")
    monkeypatch.setenv("CHATFT_THREADS", "abc")  # the workspace refuses to load with it
    assert not answer_if_unchanged(argv)
    forget_receipt(command_key(argv), "")
