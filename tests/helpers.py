"""Helpers for tests that need a registered model, a serving endpoint or the local server."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path
from types import ModuleType

from workspaces.interface import MANAGED_BY_VALUE, TAG_MANAGED_BY, Endpoint, RegisteredModel
from workspaces.local import LocalWorkspace

MANAGED_TAGS = {
    TAG_MANAGED_BY: MANAGED_BY_VALUE,
    "chatft-model": "phi3-tiny-standin-ultrachat-200k",
}


def register_model(
    ws: LocalWorkspace, model_dir: Path, name: str = "standin-test", version: str = "1"
) -> RegisteredModel:
    """Register an MLflow model folder in the workspace's registry (no training)."""
    return ws.registry.register(name, version, str(model_dir), None, "test model", {})


def serve(
    ws: LocalWorkspace,
    model: RegisteredModel,
    name: str,
    tags: dict[str, str] | None = None,
    deployment: str = "demo",
    timeout_s: float = 120,
) -> Endpoint:
    """Create an endpoint with one deployment taking 100 % of traffic; wait until ready."""
    ws.begin_create_endpoint(name, "test endpoint", dict(MANAGED_TAGS if tags is None else tags))
    deadline = time.monotonic() + timeout_s
    while (e := ws.get_endpoint(name)) is None or e.provisioning_state == "Creating":
        assert time.monotonic() < deadline, f"endpoint {name} not ready"
        time.sleep(0.2)
    ws.begin_create_deployment(name, deployment, model.id, "Local_CPU", 1, {})
    while (d := ws.get_deployment(name, deployment)).provisioning_state == "Creating":
        assert time.monotonic() < deadline, f"deployment {deployment} not ready"
        time.sleep(0.2)
    assert d.provisioning_state == "Succeeded", d.error
    return ws.set_traffic(name, {deployment: 100})


def chat_body(text: str = "What is 2 plus 3?", max_new_tokens: int = 8) -> dict:
    return {
        "input_data": {
            "input_string": [[{"role": "user", "content": text}]],
            "parameters": {
                "temperature": 0.6,
                "top_p": 0.9,
                "do_sample": True,
                "max_new_tokens": max_new_tokens,
            },
        },
        "params": {},
    }


PROJECT_DIR = Path(__file__).resolve().parent.parent


def load_local_server() -> ModuleType:
    """scripts/local_server.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "local_server", PROJECT_DIR / "scripts" / "local_server.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
