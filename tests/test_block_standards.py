"""The standard every block type of this project meets, as Prefect's integrations test theirs.

For each block type in ``blocks/``: a docstring with an example, a description and a
documentation link; every field titled and described in the schema the UI renders; the
type registers on a server; an instance saved and loaded again is equal; and a secret never
shows, neither in ``repr`` nor in the block document the UI reads.
"""

from __future__ import annotations

import inspect

import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr

import blocks.azure_credentials
import blocks.azure_ml_workspace
import blocks.local_workspace

SECRET = "blk-secret-Zq7~never-shown-41c0"


def _instances() -> dict[type[Block], Block]:
    from blocks.azure_credentials import AzureMLCredentials
    from blocks.azure_ml_workspace import AzureMLWorkspaceBlock
    from blocks.local_workspace import LocalWorkspaceBlock

    credentials = AzureMLCredentials(
        auth_kind="service_principal", tenant_id="tenant-1", client_id="client-1",
        client_secret=SECRET,
    )
    return {
        LocalWorkspaceBlock: LocalWorkspaceBlock(state_dir="/srv/chatft-state"),
        AzureMLCredentials: credentials,
        AzureMLWorkspaceBlock: AzureMLWorkspaceBlock(
            subscription_id="sub-1", resource_group="rg-1", workspace_name="ws-1",
            credentials=credentials,
        ),
    }


def _block_types() -> list[type[Block]]:
    found = []
    for module in (blocks.azure_credentials, blocks.azure_ml_workspace, blocks.local_workspace):
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, Block) and cls.__module__ == module.__name__]
    return found


BLOCK_TYPES = _block_types()


def test_every_block_type_has_a_standard_instance():
    assert set(BLOCK_TYPES) == set(_instances())


@pytest.mark.parametrize("block_type", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_docstring_description_and_documentation(block_type):
    doc = block_type.__doc__ or ""
    assert "Example:" in doc and "```python" in doc, "a docstring with a code example"
    assert block_type.get_description(), "a description for the block catalog"
    assert block_type._documentation_url, "a link to documentation"
    assert block_type.get_block_type_name() and block_type.get_block_type_slug()


@pytest.mark.parametrize("block_type", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_every_field_is_titled_and_described_in_the_ui_schema(block_type):
    schema = block_type.model_json_schema()
    for name, field in schema["properties"].items():
        assert field.get("title"), f"{name} has no title"
        assert field.get("description"), f"{name} has no description"


@pytest.mark.parametrize("block_type", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_registers_and_round_trips_through_a_server(prefect_server, block_type):
    from prefect.client.orchestration import get_client

    block_type.register_type_and_schema()
    with get_client(sync_client=True) as client:
        registered = client.read_block_type_by_slug(block_type.get_block_type_slug())
    assert registered.name == block_type.get_block_type_name()

    instance = _instances()[block_type]
    name = f"standard-{block_type.get_block_type_slug()}"
    instance.save(name, overwrite=True)
    loaded = block_type.load(name)
    assert loaded.model_dump(exclude_unset=False) == instance.model_dump(exclude_unset=False)
    for field, value in instance:
        if isinstance(value, SecretStr):
            assert getattr(loaded, field).get_secret_value() == value.get_secret_value()


@pytest.mark.parametrize("block_type", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_secrets_are_masked_in_repr_and_in_the_document_the_ui_reads(prefect_server, block_type):
    from prefect.client.orchestration import get_client

    instance = _instances()[block_type]
    assert SECRET not in repr(instance)
    assert SECRET not in str(instance)
    name = f"masked-{block_type.get_block_type_slug()}"
    document_id = instance.save(name, overwrite=True)
    with get_client(sync_client=True) as client:
        document = client.read_block_document(document_id, include_secrets=False)
    assert SECRET not in repr(document.data)
    # Every SecretStr field, nested blocks' included, is declared secret to the UI.
    declared = set(block_type.model_json_schema().get("secret_fields", []))
    assert declared == set(_secret_paths(block_type))


def _secret_paths(block_type: type[Block], prefix: str = "") -> list[str]:
    paths = []
    for name, field in block_type.model_fields.items():
        kinds = [field.annotation, *getattr(field.annotation, "__args__", ())]
        if SecretStr in kinds:
            paths.append(prefix + name)
        for kind in kinds:
            if inspect.isclass(kind) and issubclass(kind, Block):
                paths += _secret_paths(kind, f"{prefix}{name}.")
    return paths
