"""Retry and cache policies: only transient faults retry; caching really happens."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.data import download_dataset
from tasks.foundation_model import get_foundation_model
from tasks.policies import WorkspaceInputs, is_transient
from workspaces.errors import InvalidRequest, TransientWorkspaceError
from workspaces.local import LocalWorkspace
from workspaces.ultrachat import source_fingerprint


def test_cache_key_uses_the_workspace_scope_not_the_object(tmp_path):
    policy = WorkspaceInputs()
    key = lambda ws: policy.compute_key(None, {"workspace": ws, "name": "m"}, {})  # noqa: E731
    assert key(LocalWorkspace(tmp_path / "a")) == key(LocalWorkspace(tmp_path / "a"))
    assert key(LocalWorkspace(tmp_path / "a")) != key(LocalWorkspace(tmp_path / "b"))


def test_two_tasks_with_the_same_inputs_do_not_share_a_key(tmp_path):
    """The wait for a job and the read of its metrics take the same inputs; with one key the
    metrics read returned the cached job (an AttributeError on the re-run)."""
    from types import SimpleNamespace

    policy = WorkspaceInputs(required=["job_created"])
    inputs = {"workspace": LocalWorkspace(tmp_path / "a"), "job_name": "j", "job_created": "t"}

    def key(task_name: str) -> str | None:
        return policy.compute_key(SimpleNamespace(task=SimpleNamespace(name=task_name)),
                                  inputs, {})

    assert key("wait-for-job") != key("get-job-metrics")
    # without the job's creation time nothing is cached
    assert policy.compute_key(None, {**inputs, "job_created": ""}, {}) is None


def test_steps_with_unchanged_inputs_come_from_the_cache(prefect_server, workspace, tmp_path):
    @flow
    def twice() -> list[str]:
        names = []
        for _ in range(2):
            names.append(get_foundation_model(
                workspace, "phi3-tiny-standin", "latest", return_state=True).name)
            names.append(download_dataset(
                "sample", 1, str(tmp_path / "dl"), source_fingerprint("sample"),
                workspace.cache_scope, return_state=True).name)
        return names

    assert twice() == ["Completed", "Completed", "Cached", "Cached"]
    # another flow run with the same inputs hits the same cache
    assert twice() == ["Cached", "Cached", "Cached", "Cached"]


@pytest.mark.parametrize("error, attempts", [
    (TransientWorkspaceError("429 throttled"), 3),
    (InvalidRequest("bad size"), 1),
    (ValueError("a bug"), 1),
])
def test_only_transient_faults_are_retried(prefect_server, error, attempts):
    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=is_transient)
    def step() -> None:
        calls.append(1)
        raise error

    @flow
    def run() -> None:
        step()

    with pytest.raises(type(error)):
        run()
    assert len(calls) == attempts


def test_a_state_dir_made_again_is_a_new_cache_scope(tmp_path):
    import shutil

    first = LocalWorkspace(tmp_path / "ws").cache_scope
    assert LocalWorkspace(tmp_path / "ws").cache_scope == first
    shutil.rmtree(tmp_path / "ws")
    # a deleted workspace's cached results (a Completed job, say) must not carry over
    assert LocalWorkspace(tmp_path / "ws").cache_scope != first
