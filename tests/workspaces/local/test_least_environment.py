"""Issue #33: detached processes get an allow-listed environment, and /health tells a client
without a key only what it needs.

A secret in the starter's environment (an Azure client secret, Prefect's API auth string,
a project variable named like a secret, anything else) must not reach a fine-tune job or an
endpoint server: their /proc/<pid>/environ is read. The server's identity check is a
challenge answered with an HMAC of the process token, never the token itself, and a
process on the port that cannot answer it is not taken for the endpoint's server.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.helpers import answer_json, kill_processes_under, register_model, serve
from tests.workspaces.local.test_jobs import spec_for, wait
from workspaces.interface import Endpoint
from workspaces.local.state import (
    CHALLENGE_HEADER,
    PROJECT_ROOT,
    TOKEN_ENV,
    child_env,
    identity_proof,
    read_json,
    write_json,
)

# Secrets a person or a CI runner may have in the environment the flow runs in: one left out
# by family (Azure, Prefect), one of the project's own names, one nobody listed, and two of
# families a job needs (Hugging Face, MLflow) that are credentials all the same.
SECRET_NAMES = ("AZURE_CLIENT_SECRET", "PREFECT_API_AUTH_STRING", "CHATFT_TEST_SECRET_TOKEN",
                "SOME_OTHER_SECRET", "HF_TOKEN", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture
def starter_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {name: f"secret-{secrets.token_hex(12)}" for name in SECRET_NAMES}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    kill_processes_under(tmp_path)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _assert_least(env: dict[str, str], leaked: dict[str, str], token: str) -> None:
    """No secret's name or value is there; what the process needs to run is."""
    text = "\0".join(f"{k}={v}" for k, v in env.items())
    assert [n for n in leaked if n in env or leaked[n] in text] == []
    assert not any(k.startswith(("PREFECT_", "AZURE")) for k in env), sorted(env)
    assert env["PATH"] == os.environ["PATH"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(PROJECT_ROOT)
    assert env[TOKEN_ENV] == token
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["HF_HUB_OFFLINE"] == "1"


# -- the allow-list itself ---------------------------------------------------------------
def test_child_env_passes_what_a_process_needs_and_no_credential(monkeypatch, starter_secrets):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HOME", "/tmp/hf-home")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
    monkeypatch.setenv("CHATFT_ALERT_WEBHOOK_URL", "https://hooks.example/secret-path")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:password@proxy.example:3128")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    env = child_env(**{TOKEN_ENV: "the-token", "EXTRA": "set by the spawner"})
    for name in ("OMP_NUM_THREADS", "HF_HOME", "LC_ALL", "PYTHONHASHSEED", "PATH"):
        assert env[name] == os.environ[name]
    # overrides always pass, even those no list names
    assert env[TOKEN_ENV] == "the-token" and env["EXTRA"] == "set by the spawner"
    for name in (*SECRET_NAMES, "PREFECT_API_URL", "AZURE_TENANT_ID",
                 "CHATFT_ALERT_WEBHOOK_URL", "HTTPS_PROXY"):
        assert name not in env, name

    # A process that may ask the hub (a job on a hub model) gets the hub's token and proxy,
    # and still no other credential.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    env = child_env()
    assert env["HF_TOKEN"] == starter_secrets["HF_TOKEN"]
    assert env["HTTPS_PROXY"] == os.environ["HTTPS_PROXY"]
    assert [n for n in SECRET_NAMES if n in env] == ["HF_TOKEN"]
    assert "HF_TOKEN" not in child_env(HF_HUB_OFFLINE="1")


# -- a real job and a real server --------------------------------------------------------
@pytest.mark.slow
def test_a_local_job_gets_no_secret_of_its_starter(workspace, starter_secrets):
    workspace.submit_finetune_job(spec_for(workspace, "job-least", num_train_epochs="1"))
    record = read_json(workspace.root / "jobs" / "job-least" / "process.json")
    # Popen returns once the job's program runs: /proc shows its own environment.
    _assert_least(_environ(record["pid"]), starter_secrets, record["token"])
    # ... and that environment is enough to train.
    job = wait(workspace, "job-least", lambda j: j.is_terminal, timeout=300)
    assert job.status == "Completed", job.error


@pytest.fixture
def served(workspace, standin_mlflow_model, starter_secrets) -> Endpoint:
    return serve(workspace, register_model(workspace, standin_mlflow_model), "least-ep")


@pytest.mark.slow
def test_an_endpoint_server_gets_no_secret_and_health_shows_no_identity(
    workspace, served, starter_secrets, standin_mlflow_model
):
    folder = workspace.root / "endpoints" / "least-ep"
    record, config = read_json(folder / "process.json"), read_json(folder / "endpoint.json")
    _assert_least(_environ(record["pid"]), starter_secrets, record["token"])

    health_url = served.scoring_uri.replace("/score", "/health")
    public = httpx.get(health_url, timeout=10)
    assert public.status_code == 200
    assert public.json() == {"status": "Healthy", "endpoint": "least-ep",
                             "deployments": {"demo": "Succeeded"}}
    for private in (record["token"], config["id"], str(standin_mlflow_model),
                    str(record["pid"])):
        assert private not in public.text

    key = workspace.get_endpoint_keys("least-ep").secondary.get_secret_value()
    keyed = httpx.get(health_url, timeout=10, headers={"Authorization": f"Bearer {key}"})
    assert keyed.json()["models"] == {"demo": str(standin_mlflow_model)}
    assert keyed.json()["generating"] == {"demo": {"now": 0, "instances": 1}}
    wrong = httpx.get(health_url, timeout=10, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and "models" not in wrong.text

    # The identity answer is a proof the record's token makes, never the token.
    challenge = secrets.token_hex(16)
    proved = httpx.get(health_url, timeout=10, headers={CHALLENGE_HEADER: challenge})
    assert proved.json()["proof"] == identity_proof(record["token"], challenge, config["id"])
    assert record["token"] not in proved.text and config["id"] not in proved.text
    assert httpx.get(health_url, timeout=10,
                     headers={CHALLENGE_HEADER: "x" * 129}).status_code == 400

    # The manager recognises its server: Succeeded and healthy.
    endpoint = workspace.get_endpoint("least-ep")
    assert endpoint.provisioning_state == "Succeeded" and endpoint.healthy


class _Stranger(BaseHTTPRequestHandler):
    """Any process on the port: it answers /health with whatever it was given."""

    answer: dict = {}

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        answer_json(self, 200, self.answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_a_stranger_on_the_port_is_not_taken_for_the_endpoints_server(workspace, served):
    folder = workspace.root / "endpoints" / "least-ep"
    record, config = read_json(folder / "process.json"), read_json(folder / "endpoint.json")
    # A proof the real server gave for another challenge, and the old contract's identity
    # fields (even the right ones): a process that replays them is still a stranger.
    seen = secrets.token_hex(16)
    replayed = httpx.get(served.scoring_uri.replace("/score", "/health"), timeout=10,
                         headers={CHALLENGE_HEADER: seen}).json()["proof"]
    stranger = ThreadingHTTPServer(("127.0.0.1", 0), _Stranger)
    _Stranger.answer = {"status": "Healthy", "endpoint": "least-ep", "proof": replayed,
                        "endpoint_id": config["id"], "token": record["token"],
                        "deployments": {"demo": "Succeeded"}}
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    try:
        # The recorded server lives on; the endpoint's port is now the stranger's.
        write_json(folder / "endpoint.json", {**config, "port": stranger.server_address[1]})
        assert workspace.endpoints._health("least-ep", read_json(folder / "endpoint.json")) is None
        assert workspace.get_endpoint("least-ep").healthy is False
    finally:
        stranger.shutdown()
        stranger.server_close()
        write_json(folder / "endpoint.json", {**read_json(folder / "endpoint.json"),
                                              "port": config["port"]})
    assert workspace.get_endpoint("least-ep").healthy is True
