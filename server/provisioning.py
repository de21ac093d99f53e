"""What ``up`` saves on a running server before its worker starts.

The project's block types, block ``local-workspace/default``, the shared result storage
(block ``local-file-system/chatft-results``, the server's default result storage, so a
worker on any machine finds the cached steps of another), the smoke-test notification
(block ``custom-webhook/chatft-alerts`` and its automation, see blocks/alerts.py), the
``chatft-process`` work pool, and every deployment of prefect.yaml whose flow file exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from blocks import alerts
from server.api import api
from server.deployments import deployments_in, refuse_unknown_parameters
from server.instance import Server

WORK_POOL = "chatft-process"
BLOCK_NAME = "default"
RESULTS_BLOCK = "chatft-results"
BLOCK_MODULES = ("blocks.local_workspace", "blocks.azure_credentials", "blocks.azure_ml_workspace")


def save_server_objects(state_dir: Path, results_dir: Path | None) -> dict[str, str | None]:
    """Run in a child that talks to the server: the project's block types, block
    ``local-workspace/default``, the result storage block when ``results_dir`` is given,
    the smoke-test notification and the work pool. Returns what the parent reports."""
    import importlib
    import inspect

    from prefect.blocks.core import Block, InvalidBlockRegistration
    from prefect.filesystems import LocalFileSystem

    from blocks.local_workspace import LocalWorkspaceBlock

    for module in BLOCK_MODULES:  # what `prefect block register -m` does, per module
        for _, cls in inspect.getmembers(importlib.import_module(module)):
            if Block.is_block_class(cls):
                try:
                    cls.register_type_and_schema()
                except InvalidBlockRegistration:
                    pass
    LocalWorkspaceBlock(state_dir=str(state_dir)).save(BLOCK_NAME, overwrite=True)
    storage = (str(LocalFileSystem(basepath=str(results_dir)).save(RESULTS_BLOCK,
                                                                   overwrite=True))
               if results_dir is not None else None)
    block, automation, enabled = alerts.ensure_smoke_test_alert(
        os.environ.get(alerts.URL_ENV) or None)
    return {"storage_block_id": storage, "work_pool": asyncio.run(_ensure_work_pool()),
            "alerts": alerts.summary(block, automation, enabled)}


async def _ensure_work_pool() -> str:
    """The process work pool with Prefect's default job template, made when missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    async with get_client() as client:
        try:
            await client.read_work_pool(WORK_POOL)
            return "present"
        except ObjectNotFound:
            pass
        template = await get_default_base_job_template_for_infrastructure_type("process")
        try:
            await client.create_work_pool(WorkPoolCreate(
                name=WORK_POOL, type="process", base_job_template=template or {}))
        except ObjectAlreadyExists:  # another up made it meanwhile
            return "present"
        return "created"


def _run_server_objects(server: Server, state_dir: Path,
                        results_dir: Path | None) -> dict[str, str | None]:
    """save_server_objects in one child process (a prefect import costs seconds, so the
    eleven prefect commands this took are one process)."""
    # Run from the project folder, whose packages come first on the child's path.
    code = ("import json, sys; from pathlib import Path; "
            "from server.provisioning import save_server_objects as save; "
            "r = Path(sys.argv[2]) if sys.argv[2] else None; "
            "print(json.dumps(save(Path(sys.argv[1]), r)))")
    result = subprocess.run(
        [sys.executable, "-c", code, str(state_dir.resolve()),
         str(results_dir.resolve()) if results_dir else ""],
        cwd=server.project_dir, env=server.env(), capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError("saving the blocks, the notification and the work pool failed:\n"
                           f"{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def results_block_wanted(server: Server) -> tuple[bool, str | None]:
    """Whether ``up`` saves its result storage block (False when the server's default is
    another block, kept), and the id of ours when it is the default already."""
    current = (api(server, "GET", "/admin/storage") or {}).get("default_result_storage_block_id")
    if not current:
        return True, None
    block = api(server, "GET", f"/block_documents/{current}")
    slug = f"{block['block_type']['slug']}/{block['name']}"
    if slug != f"local-file-system/{RESULTS_BLOCK}":
        print(f"Result storage: {slug} (this server's default, kept)")
        return False, None
    return True, current


def configure(server: Server, state_dir: Path, results_dir: Path | None = None) -> list[str]:
    """Blocks, the block document, result storage, the notification, the work pool and
    the deployments; returns those deployed."""
    results_dir = (results_dir or server.home / "results").resolve()
    wanted, ours = results_block_wanted(server)
    if wanted:
        results_dir.mkdir(parents=True, exist_ok=True)
    saved = _run_server_objects(server, state_dir, results_dir if wanted else None)
    print(f"Block local-workspace/{BLOCK_NAME}: state_dir {state_dir.resolve()}")
    if wanted:
        if saved["storage_block_id"] != ours:
            api(server, "PUT", "/admin/storage",
                {"default_result_storage_block_id": saved["storage_block_id"]})
        print(f"Result storage: local-file-system/{RESULTS_BLOCK} at {results_dir} "
              "(this server's default: every worker must see this folder at this path)")
    print(saved["alerts"])
    deployments = []
    for deployment in deployments_in(server.project_dir):
        if deployment["present"]:
            deployments.append(deployment)
        else:
            print(f"Skipping deployment {deployment['name']}: "
                  f"{deployment['entrypoint']} does not exist yet")
    if deployments:
        # One process for all of them: each `prefect deploy` spends seconds importing.
        names = [word for d in deployments for word in ("--name", d["name"])]
        server.prefect("--no-prompt", "deploy", *names)
    for deployment in deployments:
        refuse_unknown_parameters(server, deployment)
        print(f"Deployed {deployment['name']}")
    return [d["name"] for d in deployments]
