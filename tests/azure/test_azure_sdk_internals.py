"""The private parts of azure-ai-ml the project uses, all in workspaces/azure/sdk_internals.py
and held by the ``azure-ai-ml<1.36`` pin: checked against the installed SDK, so a newer
version that moves or reshapes one fails here, naming it and what it is used for, before a
flow meets it; and no other module reaches into the SDK's private parts."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import azure.ai.ml
import pytest

from tests.azure.fake_azureml.credential import FakeCredential
from workspaces.azure import sdk_internals
from workspaces.azure.sdk_internals import INTERNALS, Internal

ROOT = Path(__file__).resolve().parents[2]
SDK_MODULES = [*sorted((ROOT / "workspaces" / "azure").glob("*.py")),
               *sorted((ROOT / "blocks").glob("azure*.py"))]


@pytest.fixture(scope="module")
def offline_client():  # noqa: ANN201
    """A workspace client nothing is asked of: building one sends no request."""
    from azure.ai.ml import MLClient

    return MLClient(FakeCredential(), "sub", "rg", "ws")


def _changed(internal: Internal) -> str:
    return (f"azure-ai-ml {azure.ai.ml.__version__} changed {internal.name}, which "
            f"workspaces/azure/sdk_internals.py uses for {internal.used_for}")


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda internal: internal.name)
def test_each_private_part_used_is_there_with_the_shape_used(offline_client, internal):
    try:
        found = internal.locate(offline_client)
    except AttributeError as exc:
        pytest.fail(f"{_changed(internal)}: it is gone ({exc}). Use a public call instead, "
                    "or keep azure-ai-ml<1.36 in pyproject.toml")
    if internal.params is None:
        assert found is not None, f"{_changed(internal)}: it is no longer set"
        return
    assert callable(found), f"{_changed(internal)}: it is no longer callable"
    params = list(inspect.signature(found).parameters)
    missing = [name for name in internal.params if name not in params]
    assert not missing, (f"{_changed(internal)}: it no longer takes {', '.join(missing)} "
                         f"(it takes {', '.join(params)})")


def test_the_private_parts_answer_as_relied_on(fake):
    """Against the HTTPS fake: the workspace's id, an endpoint in one GET, its keys in one
    request, a job's steps and a failed step's error from run history."""
    from azure.ai.ml import MLClient

    ml = MLClient(FakeCredential(), fake.subscription, fake.resource_group, fake.workspace,
                  cloud=f"FakeCloud{fake.server.port}", cloud_metadata=fake.cloud_metadata(),
                  retry_total=0)
    assert sdk_internals.workspace_id(ml.workspaces.get(fake.workspace)) == fake.workspace_id

    fake.add_endpoint("ep-probe", {"team": "probe"}, {"blue": "Standard_DS3_v2"})
    fake.requests.clear()
    endpoint = sdk_internals.read_online_endpoint(ml, "ep-probe")
    keys = sdk_internals.endpoint_keys(ml, "ep-probe")
    assert (endpoint.tags, endpoint.traffic) == ({"team": "probe"}, {"blue": 100})
    assert keys.primary_key == fake.keys["ep-probe"]["primaryKey"]
    assert [f"{r.method} {r.path.rsplit('/', 1)[-1]}" for r in fake.requests] == [
        "GET ep-probe", "POST listKeys"]

    for run_id, parent in (("job-probe", None), ("job-probe_train", "job-probe")):
        fake.runs[run_id] = {"run_id": run_id, "name": run_id.rsplit("_", 1)[-1],
                             "parent": parent, "experiment_id": "1", "status": "Failed",
                             "metrics": {}}
    [step] = sdk_internals.run_children(ml, "job-probe")
    assert step.display_name == "train"
    details = sdk_internals.run_details(ml, "job-probe_train")
    assert details.error.error.message == "step train failed"


def _private_uses(path: Path) -> list[tuple[str, str]]:
    """(where, what) of each ``x._name`` (x not self/cls), ``getattr(x, "_name")`` and
    import of a private azure.ai.ml module in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not (
            node.attr.startswith("__")
            or (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append((where, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)
              and str(node.args[1].value).startswith("_")):
            found.append((where, str(node.args[1].value)))
        found += [(where, f"import {name}") for name in _imported(node)
                  if name.startswith("azure.ai.ml") and "._" in name]
    return found


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def test_no_other_module_reaches_into_the_sdks_private_parts():
    uses = [use for path in SDK_MODULES if path.name != "sdk_internals.py"
            for use in _private_uses(path)]
    for folder in ("workspaces", "tasks", "flows", "blocks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            uses += [use for use in _private_uses(path) if use[1].startswith("import ")]
    assert uses == [], ("private azure-ai-ml parts used outside workspaces/azure/"
                        f"sdk_internals.py: {uses}; move them there, each named in INTERNALS")


def test_every_private_part_sdk_internals_touches_is_checked():
    touched = {what for _, what in
               _private_uses(ROOT / "workspaces" / "azure" / "sdk_internals.py")}
    listed = {part for internal in INTERNALS for part in internal.name.split(".")}
    assert touched - listed == set(), (
        f"sdk_internals.py uses {sorted(touched - listed)} without a line in INTERNALS")
