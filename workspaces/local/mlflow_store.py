"""The local workspace's MLflow database: its tables made once, its experiments made once.

MLflow creates (and migrates) its SQLite tables from whichever process first opens the
database. Two first jobs of a fresh workspace did that at once and one failed ("table
registered_model_tags already exists", or a half-applied migration). Every process of
this project opens the database through :func:`client`, which does it under a lock beside
the database file, once per process.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from workspaces.local.state import locked

if TYPE_CHECKING:
    from mlflow import MlflowClient

_READY: set[str] = set()
_READY_LOCK = threading.Lock()


def database_path(tracking_uri: str) -> Path:
    """The SQLite file behind a ``sqlite:///`` tracking URI."""
    if not tracking_uri.startswith("sqlite:///"):
        raise ValueError(f"the local workspace keeps MLflow in SQLite, not {tracking_uri!r}")
    return Path(tracking_uri.removeprefix("sqlite:///"))


def client(tracking_uri: str) -> MlflowClient:
    """A tracking and registry client on the workspace's database, its tables ready."""
    from mlflow import MlflowClient

    ensure_tables(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_tables(tracking_uri: str) -> None:
    """Create and migrate the tracking and registry tables, one process at a time."""
    with _READY_LOCK:
        if tracking_uri in _READY:
            return
        from mlflow import MlflowClient

        path = database_path(tracking_uri)
        with locked(path.with_name(f".{path.name}.lock")):
            # Opening each store creates its tables when they are missing; these two reads
            # are the cheapest calls that open them.
            opened = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            opened.search_experiments(max_results=1)
            opened.search_registered_models(max_results=1)
        _READY.add(tracking_uri)


def experiment_id(tracking_uri: str, name: str, artifact_location: str) -> str:
    """The id of experiment ``name``, created when missing (two jobs may ask at once)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another job created it between the read and the create.
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
