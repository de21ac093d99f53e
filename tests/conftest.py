"""Shared fixtures: a Prefect test server, local workspaces, a servable model, endpoints.

Endpoints started by a test are real server processes; the ``workspace`` fixture stops
and deletes every one of them when the test ends.

``make test`` runs the modules on three pytest-xdist workers, a module to a worker at a
time (``--dist loadfile``): most of the suite's time is spent waiting (liveness bounds,
canary watches, servers starting), which the other workers fill. So that they do not each
take every core when they compute together, every workspace of the run shares one thread
board (:mod:`workspaces.local.thread_budget`); without it, three workers took 26 min 53 s
and 39.6 min of CPU, against 16 min 20 s and 23.1 min with it. The modules measured
longest start first, so the run does not end on one of them alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that wait for work sleep instead of spinning: three workers' processes
# computing on 2 cores otherwise burn each other's time. Measured, 3 workers on 2 idle
# cores: 12 min 51 s and 16.9 min of CPU, against 16 min 20 s and 23.1 min spinning.
# Every process the tests start inherits it (OMP_ passes the workspace's allow-list).
# Not the product's default: a process alone is slower waiting passively
# (scripts/bench_shared_cores.py: training 1.44 against 1.18 s/step, an idle endpoint's
# median reply 1.14 against 0.74 s) and one beside another gains nothing (2.03 against 2.08).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workspaces.local import LocalWorkspace  # noqa: E402
from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION, build_standin  # noqa: E402
from workspaces.local.thread_budget import BOARD_ENV  # noqa: E402

# Longest first, by their time on 2 idle cores (``--durations``); the others follow in
# their usual order. A module missing here only starts later.
LONGEST_MODULES = (
    "tests/flows/test_rollout_interference.py",
    "tests/flows/test_rollout_crashes.py",
    "tests/flows/test_concurrent_requests.py",
    "tests/flows/test_finetune_and_deploy.py",
    "tests/flows/test_release_control.py",
    "tests/flows/test_rollout.py",
    "tests/test_team_server.py",
    "tests/workspaces/local/test_jobs.py",
    "tests/azure/test_azure_release_control.py",
    "tests/test_server_schedules.py",
    "tests/azure/test_azure_rollout.py",
    "tests/test_prefect_server.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the longest modules first (xdist keeps this order with --no-loadscope-reorder)."""
    rank = {module: n for n, module in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def run_thread_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One thread board for every workspace of the run, over all xdist workers."""
    base = tmp_path_factory.getbasetemp()
    # an xdist worker's base is <run>/popen-gwN: the run's folder is its parent
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BOARD_ENV, str(run / "threads"))
        yield


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in base model, built once per session."""
    return build_standin(tmp_path_factory.mktemp("catalog") / STANDIN_NAME / STANDIN_VERSION)


@pytest.fixture(scope="session")
def standin_mlflow_model(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in saved as an MLflow transformers model, ready to deploy (no training)."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("mlflow-model") / "model"
    mlflow.transformers.save_model(
        transformers_model={
            "model": AutoModelForCausalLM.from_pretrained(standin_dir),
            "tokenizer": AutoTokenizer.from_pretrained(standin_dir),
        },
        path=str(target),
        task="text-generation",
        pip_requirements=["transformers", "torch", "mlflow"],
    )
    return target


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables made, as a workspace's first process makes them.

    Making and migrating the tables takes MLflow 1.5-4 s; a copy takes milliseconds.
    tests/workspaces/local/test_mlflow_store.py makes them from nothing, racing.
    """
    from workspaces.local import mlflow_store

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow_store.ensure_tables(f"sqlite:///{path}")
    return path


@pytest.fixture
def workspace(
    tmp_path: Path, standin_dir: Path, empty_mlflow_db: Path
) -> Iterator[LocalWorkspace]:
    """A fresh local workspace sharing the session's stand-in; its endpoints die with it."""
    ws = LocalWorkspace(tmp_path / "workspace")
    ws.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_mlflow_db, ws.root / "mlflow.db")
    target = ws.root / "catalog" / STANDIN_NAME / STANDIN_VERSION
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(standin_dir, target)
    yield ws
    for endpoint in ws.list_endpoints():
        ws.begin_delete_endpoint(endpoint.name)
