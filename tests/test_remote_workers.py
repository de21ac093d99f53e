"""Workers on more than one machine serve the pool through prefect.git.yaml's git_clone pull.

Machines are stood in for by folders: a bare repository made from this project's HEAD
commit plays the remote (file://, no network); the deployment is made with
``prefect deploy --prefect-file prefect.git.yaml`` from one clone, which is then deleted;
two process workers run from two other clones at different paths. After the deploy the
remote's branch moves on to a commit without the flow file, so a run completes only if
it checks out the pinned commit.

The flow is the smoke test on an empty local workspace (the cheapest flow; its runs
override the Azure block with an empty ``workspace_block``, so each worker's
``$CHATFT_STATE_DIR``). The deployment's concurrency limit (1, cancel new: one hourly
smoke test at a time) is lifted through the API, as a person would in the UI, so several
runs are in flight at once.

Outcomes checked: every run Completed; each worker's log names some of the runs; the
deployment's pull step is git_clone at the project's commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.api import api
from server.instance import Server, prefect_executable
from server.manager import start_server
from server.provisioning import WORK_POOL
from tests.helpers import PROJECT_DIR, free_port

pytestmark = pytest.mark.slow

DEPLOYMENT = "smoke-test-endpoints/smoke-test-endpoints-azure"
RUNS = 4
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}



def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd or Path.cwd())}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def make_remote(root: Path) -> tuple[str, str]:
    """A bare repository holding this project's HEAD commit as main: (file:// URL, sha)."""
    head = git("rev-parse", "HEAD", cwd=PROJECT_DIR)
    bare = root / "remote" / "chat-finetune-flows.git"
    bare.parent.mkdir(parents=True)
    git("init", "--bare", "--initial-branch=main", str(bare), cwd=root)
    git("push", bare.as_uri(), "HEAD:refs/heads/main", cwd=PROJECT_DIR)
    return bare.as_uri(), head


def clone(url: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "--quiet", url, str(path), cwd=path.parent)
    return path


def move_branch_on(url: str, root: Path) -> None:
    """Push a commit without the flow file: only the pinned commit still runs."""
    scratch = clone(url, root / "scratch")
    git("rm", "--quiet", "flows/smoke_test_endpoints.py", cwd=scratch)
    git("commit", "--quiet", "-m", "remove the smoke test", cwd=scratch)
    git("push", "--quiet", "origin", "main", cwd=scratch)
    shutil.rmtree(scratch)


def start_worker(server, name: str, folder: Path, logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(
        [prefect_executable(), "worker", "start", "--pool",
         WORK_POOL, "--type", "process", "--name", name, "--limit", "2"],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=server.env(PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_HOME=str(folder / ".prefect"),
                       CHATFT_STATE_DIR=str(folder / ".workspace"), HF_HUB_OFFLINE="1"),
    )


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, 9)
        process.wait(timeout=10)


def test_runs_spread_over_two_workers_cloning_the_pinned_commit(tmp_path: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    url, head = make_remote(tmp_path)
    deployer = clone(url, tmp_path / "deployer" / "chat-finetune-flows")
    server = Server(tmp_path / "prefect-home", "127.0.0.1", free_port(),
                    project_dir=tmp_path)
    workers: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        start_server(server)
        server.prefect("work-pool", "create", WORK_POOL, "--type", "process")
        deployed = subprocess.run(
            [prefect_executable(), "--no-prompt", "deploy", "--prefect-file",
             "prefect.git.yaml", "--name", DEPLOYMENT.split("/")[1]],
            cwd=deployer, env=server.env(), capture_output=True, text=True)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        # The deploying machine's clone is gone, and the remote's branch has moved on.
        shutil.rmtree(deployer.parent)
        move_branch_on(url, tmp_path)
        for name, folder in (("worker-a", tmp_path / "machine-a" / "chat-finetune-flows"),
                             ("worker-b", tmp_path / "machine-b" / "src" / "chatft")):
            workers.append(start_worker(server, name, clone(url, folder), logs))

        with SyncPrefectClient(server.api_url) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            [pull] = deployment.pull_steps
            assert pull["prefect.deployments.steps.git_clone"] == {
                "repository": url, "commit_sha": head}
            api(server, "PATCH", f"/deployments/{deployment.id}",
                {"concurrency_limit": None})
            runs = [client.create_flow_run_from_deployment(
                deployment.id, parameters={"workspace_block": ""}) for _ in range(RUNS)]
            deadline = time.monotonic() + 600
            while True:
                states = [client.read_flow_run(r.id).state for r in runs]
                if all(s.is_final() for s in states) or time.monotonic() > deadline:
                    break
                time.sleep(2)
        worker_logs = {p.stem: p.read_text(errors="replace") for p in logs.glob("*.log")}
        report = "\n".join(f"--- {n} ---\n{text[-3000:]}" for n, text in worker_logs.items())
        assert [s.type.value for s in states] == ["COMPLETED"] * RUNS, report
        # A run's own output (streamed to its worker's log) names it once it runs there;
        # "submitting" lines are not proof: both workers may bid for a run, one is refused.
        served = {name: [str(r.id) for r in runs if f"/runs/flow-run/{r.id}" in text]
                  for name, text in worker_logs.items()}
        assert all(served.values()), served
        assert sorted(sum(served.values(), [])) == sorted(str(r.id) for r in runs), served
        print(f"runs per worker: { {n: len(ids) for n, ids in served.items()} }",
              file=sys.stderr)
    finally:
        for process in workers:
            stop(process)
        server.stop("server")
