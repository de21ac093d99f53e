"""The local workspace's release history: one MLflow run per event, beside the models.

Each event of an endpoint's history (workspaces/release_history.py) is a run in the
experiment ``releases/<endpoint>`` of the workspace's MLflow database: its start time is the
event's, its tags hold every field (the whole event as JSON in ``chatft-release-event``, and
each field readable in MLflow's UI), and its numeric figures are metrics. The model version
the event concerns gets the ``chatft-last-release`` tag. Nothing is kept in the Prefect
server: the history is read back from here whatever happened to it.
"""

from __future__ import annotations

import json

from workspaces.local import mlflow_store
from workspaces.release_history import TAG_LAST_RELEASE, ReleaseEvent, newest_first

EXPERIMENT_PREFIX = "releases/"
EVENT_TAG = "chatft-release-event"


def _experiment(tracking_uri: str, endpoint: str, artifact_root: str) -> str:
    return mlflow_store.experiment_id(tracking_uri, EXPERIMENT_PREFIX + endpoint,
                                      f"{artifact_root}/releases/{endpoint}")


def append(tracking_uri: str, artifact_root: str, event: ReleaseEvent,
           mlflow_version: str | None) -> None:
    """Record ``event`` as a finished run; tag the model version it concerns."""
    client = mlflow_store.client(tracking_uri)
    experiment = _experiment(tracking_uri, event.endpoint, artifact_root)
    started = int(event.at.timestamp() * 1000)
    tags = {
        EVENT_TAG: event.model_dump_json(),
        "mlflow.runName": f"{event.action} {event.model_version or event.deployment}".strip(),
        "mlflow.note.content": event.reason,
        **{f"chatft.{k}": str(v) for k, v in event.model_dump(
            exclude={"figures", "at", "seq"}).items() if v},
    }
    run = client.create_run(experiment, start_time=started, tags=tags)
    for key, value in event.figures.items():
        try:
            client.log_metric(run.info.run_id, key.replace(" ", "_"), float(value),
                              timestamp=started)
        except ValueError:
            pass  # a figure that is not a number stays in the event's JSON tag
    client.set_terminated(run.info.run_id, "FINISHED", end_time=started)
    if event.model and mlflow_version:
        client.set_model_version_tag(event.model, mlflow_version, TAG_LAST_RELEASE,
                                     event.model_dump_json(exclude={"figures", "seq"}))


def read(tracking_uri: str, endpoint: str) -> list[ReleaseEvent]:
    """Every event recorded for ``endpoint``, newest first."""
    client = mlflow_store.client(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + endpoint)
    if experiment is None:
        return []
    events, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            text = run.data.tags.get(EVENT_TAG)
            if text:
                events.append(ReleaseEvent(**json.loads(text)))
        token = page.token
        if not token:
            return newest_first(events)
