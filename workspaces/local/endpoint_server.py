"""The HTTP server behind one local online endpoint (FastAPI + uvicorn on 127.0.0.1).

Run as ``python -m workspaces.local.endpoint_server <endpoint_dir>``; the endpoint manager
starts it detached, so it outlives the flow run, as an Azure endpoint does.

It speaks the Azure ML online endpoint scoring contract for chat-completion models:

- ``POST /score`` with ``Authorization: Bearer <primary or secondary key>``, optional
  ``azureml-model-deployment`` header, body ``{"input_data": {"input_string": [[messages]],
  "parameters": {...}}, "params": {}}``; answer ``{"output": "<assistant text>"}``.
- 401 for a missing or wrong key, 400 for a malformed body (naming the field), 413 for a
  body over 1 MiB, 404 when no deployment can take the request, 408 past the deployment's
  request timeout, 429 when the deployment holds more requests than its instances'
  batches take plus the 2 per instance it queues (Azure queues 2 x
  max_concurrent_requests_per_instance x instance_count; a fault drill's canned reply
  takes no place in a batch, only in the queue), 424 when the model fails.
- ``GET /health`` without a key answers what any client may know: ``status``, the
  ``endpoint`` name and each deployment's state (``deployments``). With a valid key
  (``Authorization: Bearer <primary or secondary key>``, as ``/score`` checks it) it adds
  the model folder each loaded deployment serves (``models``), how many of its
  ``instance_count`` instances are generating (``generating``: ``now``, ``instances``) and
  how many requests are in their batches or wait for a place (``requests``:
  ``generating``, ``waiting``); a wrong key is a 401, as for ``/score``.
- Identity, without a key and without sending a secret: a request with an
  ``X-Chatft-Challenge`` header (a fresh random value, at most 128 characters) gets
  ``proof``, the HMAC-SHA256 (hex) of the challenge followed by the endpoint id this server
  was started for, keyed by its process token (``$CHATFT_PROCESS_TOKEN``, also in the
  folder's ``process.json``). The endpoint manager checks it to tell its own server from
  any other process on the port; the token and the endpoint id are never sent.

Each instance of a deployment generates for a batch of up to MAX_BATCH_PER_INSTANCE
requests at once, one forward pass per decoding step; requests join a running batch
between two steps and leave it, answered, when they end
(:mod:`workspaces.local.batched_generation`).

Every request is appended to ``requests.jsonl`` (time, deployment, status, latency, caller
marker) so later flows can tell organic use from the project's own requests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from workspaces.interface import CALLER_HEADER
from workspaces.local.batched_generation import Batcher
from workspaces.local.mlflow_models import load_components
from workspaces.local.state import (
    CHALLENGE_HEADER,
    MAX_CHALLENGE_CHARS,
    REQUEST_LOG,
    TOKEN_ENV,
    boot_id,
    identity_proof,
    process_token,
    read_json,
    since_boot,
    write_json,
)
from workspaces.scoring import BadScoringBody, parse_body, reply_body

MAX_BODY_BYTES = 1 << 20
# Requests one instance generates for together, one forward pass per decoding step.
MAX_BATCH_PER_INSTANCE = 16
# Requests that may wait for a place in a batch, per instance: Azure queues
# 2 x max_concurrent_requests_per_instance (default 1) x instance_count, then answers 429.
QUEUE_PER_INSTANCE = 2
# What a 429 tells the caller to wait, in seconds (Azure sends Retry-After too).
RETRY_AFTER_S = 1
# How long a stopping server waits for its instances' threads to end.
SHUTDOWN_WAIT_S = 5.0

logger = logging.getLogger("endpoint_server")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end an assistant turn: the model's eos ids, and Phi-3's ``<|end|>``.

    SmolLM2 ends a turn with ``<|im_end|>`` (its eos); the Phi-3 stand-in with ``<|end|>``.
    """
    configured = model.generation_config.eos_token_id
    ids = list(configured) if isinstance(configured, list | tuple) else [configured]
    ids.append(tokenizer.eos_token_id)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
        ids.append(end_id)
    return sorted({i for i in ids if isinstance(i, int)})


class LoadedModel:
    """An MLflow transformers model held in memory, generating in batches on ``instances``
    instances (see :mod:`workspaces.local.batched_generation`)."""

    def __init__(self, path: Path, instances: int = 1) -> None:
        """Load the model in ``path`` and start its instances (ready when this returns)."""
        self.path = path
        self.model, self.tokenizer = load_components(path)
        self.model.eval()
        self.batcher = Batcher(
            self.model,
            self.tokenizer,
            stop_token_ids(self.model, self.tokenizer),
            instances=instances,
            max_batch=MAX_BATCH_PER_INSTANCE,
            thread_role="endpoint",
        )

    def close(self, wait_s: float = 0.0) -> None:
        """Take no more requests; the instances end once they answered what they hold."""
        self.batcher.close(wait_s)


class EndpointState:
    """endpoint.json and keys.json, re-read when they change; loads deployments as they appear."""

    def __init__(self, endpoint_dir: Path) -> None:
        """The state of the endpoint recorded in ``endpoint_dir``, read once now."""
        self.dir = endpoint_dir
        self.config: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.models: dict[str, LoadedModel] = {}
        self.pending: dict[str, int] = {}
        self.mtime = 0.0
        self.lock = threading.Lock()
        self.log_lock = threading.Lock()
        # Who this server is: the endpoint it was started for and the token of its record.
        self.token = os.environ.get(TOKEN_ENV)
        self.endpoint_id = (read_json(endpoint_dir / "endpoint.json") or {}).get("id")
        # A restarted server loads every deployment again; old readiness no longer holds.
        for stale in endpoint_dir.glob("deployment-*.json"):
            stale.unlink()
        self.refresh()

    def refresh(self) -> None:
        """Read endpoint.json and keys.json again when they changed; let go of deployments
        that went, start loading the ones that came."""
        path = self.dir / "endpoint.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self.mtime:
            return
        self.config = read_json(path) or {}
        self.keys = read_json(self.dir / "keys.json") or {}
        self.mtime = mtime
        deployments = self.config.get("deployments", {})
        # A deployment deleted (or made again with another model under its name, as a
        # rollback and a re-release do) lets go of the model it held: a request must never
        # be answered by the weights of a deployment that no longer exists.
        for name, model in list(self.models.items()):
            if deployments.get(name, {}).get("model_path") != str(model.path):
                del self.models[name]
                model.close()
                (self.dir / f"deployment-{name}.json").unlink(missing_ok=True)
        for name, deployment in deployments.items():
            status_file = self.dir / f"deployment-{name}.json"
            if name in self.models and not status_file.exists():
                # Deleted and made again with the same model between two reads: it is loaded.
                write_json(status_file, {"state": "Succeeded", "ready_at": time.time()})
            elif name not in self.models and not status_file.exists():
                threading.Thread(target=self._load, args=(name, deployment), daemon=True).start()

    def _load(self, name: str, deployment: dict[str, Any]) -> None:
        status_file = self.dir / f"deployment-{name}.json"
        write_json(status_file, {"state": "Creating"})
        try:
            self.models[name] = LoadedModel(
                Path(deployment["model_path"]), int(deployment.get("instance_count", 1))
            )
            write_json(status_file, {"state": "Succeeded", "ready_at": time.time()})
            logger.info("deployment %s loaded %s", name, deployment["model_path"])
        except Exception as exc:  # report any load failure as the deployment's error
            logger.exception("deployment %s failed to load", name)
            write_json(
                status_file, {"state": "Failed", "error": f"{exc.__class__.__name__}: {exc}"}
            )

    def still_owner(self) -> bool:
        """False once the endpoint was deleted, made again, or another server recorded."""
        config = read_json(self.dir / "endpoint.json")
        if config is None or config.get("id") != self.endpoint_id:
            return False
        return self.token is None or process_token(self.dir) == self.token

    def watch(self) -> None:
        """Refresh every 0.5 s, forever; exit the process once the endpoint is not ours."""
        while True:
            time.sleep(0.5)
            try:
                if not self.still_owner():
                    # Never serve an endpoint that is no longer ours (its keys may be new).
                    logger.warning(
                        "endpoint %s is no longer served by this process; exiting", self.dir.name
                    )
                    os._exit(0)
                self.refresh()
            except Exception:  # a half-edited file must not kill the watcher
                logger.exception("could not refresh endpoint state")

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries the primary or the secondary key."""
        if not header or not header.startswith("Bearer "):
            return False
        given = header.removeprefix("Bearer ").strip().encode()
        return any(
            hmac.compare_digest(given, key.encode())
            for key in (self.keys.get("primary"), self.keys.get("secondary"))
            if key
        )

    def choose_deployment(self, requested: str | None) -> str | None:
        """The deployment a request goes to: the one it names (if it exists), else one drawn
        by the traffic split; None when neither gives one."""
        deployments = self.config.get("deployments", {})
        if requested:
            return requested if requested in deployments else None
        traffic = {
            k: v for k, v in self.config.get("traffic", {}).items() if v > 0 and k in deployments
        }
        if not traffic:
            return None
        return random.choices(list(traffic), weights=list(traffic.values()))[0]

    def close_models(self, wait_s: float) -> None:
        """Let every loaded model go, waiting up to ``wait_s`` for each one's instances."""
        for model in list(self.models.values()):
            model.close(wait_s)

    def log_request(self, record: dict[str, Any]) -> None:
        """Append one request's record to requests.jsonl (one JSON object per line)."""
        with self.log_lock, open(self.dir / REQUEST_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _request_limit(deployment: dict[str, Any], simulate: dict[str, Any]) -> int:
    """Requests a deployment holds before it answers 429: its instances' batches and their
    queues. A fault drill's canned reply takes no place in a batch, only in the queue."""
    instances = int(deployment.get("instance_count", 1))
    canned = "status_code" in simulate or "body" in simulate
    return instances * (QUEUE_PER_INSTANCE + (0 if canned else MAX_BATCH_PER_INSTANCE))


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def create_app(endpoint_dir: Path) -> FastAPI:
    """The endpoint server's app for the endpoint recorded in ``endpoint_dir``; its watcher
    thread starts here, its deployments load as the recorded ones appear."""
    state = EndpointState(endpoint_dir)
    threading.Thread(target=state.watch, daemon=True).start()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Served requests are answered by now; idle instances end before the process does.
        state.close_models(SHUTDOWN_WAIT_S)

    app = FastAPI(title=f"local online endpoint {state.config.get('name', '')}", lifespan=lifespan)
    app.state.endpoint = state
    app.add_api_route("/health", health, methods=["GET"], response_model=None)
    app.add_api_route("/score", score, methods=["POST"])
    return app


def _deployment_states(state: EndpointState) -> dict[str, str]:
    """Each recorded deployment's state as its status file says (Creating until it says)."""
    return {
        name: (read_json(state.dir / f"deployment-{name}.json") or {}).get("state", "Creating")
        for name in state.config.get("deployments", {})
    }


def _loaded_models(state: EndpointState) -> dict[str, Any]:
    """What a key holder may read of the loaded deployments: their model folders, busy
    instances, and the requests in their batches or queued for a place in one."""
    loaded = list(state.models.items())
    return {
        "models": {name: str(model.path) for name, model in loaded},
        "generating": {
            name: {"now": model.batcher.busy, "instances": model.batcher.instances}
            for name, model in loaded
        },
        "requests": {
            name: {"generating": model.batcher.generating, "waiting": model.batcher.waiting}
            for name, model in loaded
        },
    }


def health(request: Request) -> dict[str, Any] | JSONResponse:
    """``GET /health``: the public states; with a key the loaded models; with a challenge
    this server's proof of identity (module docstring)."""
    state: EndpointState = request.app.state.endpoint
    answer: dict[str, Any] = {
        "status": "Healthy",
        "endpoint": state.config.get("name"),
        "deployments": _deployment_states(state),
    }
    challenge = request.headers.get(CHALLENGE_HEADER)
    if challenge is not None:
        if not 0 < len(challenge) <= MAX_CHALLENGE_CHARS:
            return _error(400, "BadRequest", f"{CHALLENGE_HEADER} must hold 1 to "
                          f"{MAX_CHALLENGE_CHARS} characters")
        # A server started without a token (by hand) cannot prove it is a recorded one.
        if state.token and state.endpoint_id:
            answer["proof"] = identity_proof(state.token, challenge, state.endpoint_id)
    header = request.headers.get("authorization")
    if header is None:
        return answer
    # The keys the watcher read last (every 0.5 s): a refresh here would race its own.
    if not state.authorized(header):
        return _error(401, "Unauthorized", "invalid endpoint key (Authorization: Bearer <key>)")
    return answer | _loaded_models(state)


class _Refused(Exception):
    """A scoring request answered with an error before any deployment took it."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


async def _read_scoring_body(request: Request) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages and parameters of an authorized request's body; :class:`_Refused` with
    401, 413 or 400 (naming the field) otherwise."""
    state: EndpointState = request.app.state.endpoint
    if not state.authorized(request.headers.get("authorization")):
        raise _Refused(_error(
            401, "Unauthorized", "missing or invalid endpoint key (Authorization: Bearer <key>)"))
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _Refused(_error(
            413, "PayloadTooLarge", f"body is {len(raw)} bytes; at most {MAX_BODY_BYTES}"))
    try:
        return parse_body(json.loads(raw or b"null"))
    except json.JSONDecodeError as exc:
        raise _Refused(_error(400, "BadRequest", f"body is not valid JSON: {exc.msg}")) from exc
    except RecursionError as exc:
        raise _Refused(_error(
            400, "BadRequest",
            "body is nested too deeply to parse; a scoring body needs only a few levels")) from exc
    except BadScoringBody as exc:
        raise _Refused(_error(400, "BadRequest", str(exc))) from exc


def _taking_deployment(state: EndpointState, name: str | None) -> LoadedModel:
    """The loaded model of deployment ``name``; :class:`_Refused` with 404 or 503."""
    if name is None:
        raise _Refused(_error(
            404, "DeploymentNotFound",
            "no deployment with positive traffic, or the named deployment does not exist"))
    model = state.models.get(name)
    if model is None:
        raise _Refused(_error(
            503, "DeploymentNotReady", f"deployment {name!r} is still loading its model"))
    return model


async def score(request: Request) -> JSONResponse:
    """``POST /score``: the scoring contract (module docstring); every request is logged."""
    state: EndpointState = request.app.state.endpoint
    started = time.perf_counter()
    # The boot clock beside the wall clock: the teardown's idle window is measured on it,
    # so a clock step cannot make a busy endpoint look idle (see LocalEndpoints.activity).
    record: dict[str, Any] = {
        "time": time.time(),
        "since_boot": since_boot(),
        "boot_id": boot_id(),
        "request_id": str(uuid.uuid4()),
        "caller": request.headers.get(CALLER_HEADER) or "organic",
        "deployment": None,
    }

    def finish(response: JSONResponse) -> JSONResponse:
        record["status"] = response.status_code
        record["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        state.log_request(record)
        response.headers["x-request-id"] = record["request_id"]
        if record["deployment"]:
            response.headers["azureml-model-deployment"] = record["deployment"]
        return response

    state.refresh()
    try:
        messages, parameters = await _read_scoring_body(request)
        name = state.choose_deployment(request.headers.get("azureml-model-deployment"))
        record["deployment"] = name
        model = _taking_deployment(state, name)
    except _Refused as refused:
        return finish(refused.response)
    deployment = state.config["deployments"][name]
    simulate = deployment.get("simulate") or {}
    limit = _request_limit(deployment, simulate)
    with state.lock:
        if state.pending.get(name, 0) >= limit and not simulate.get("ignore_limit"):
            return finish(_error(
                429, "TooManyRequests",
                f"more than {limit} requests are waiting for deployment {name!r}",
                headers={"Retry-After": str(RETRY_AFTER_S)}))
        state.pending[name] = state.pending.get(name, 0) + 1
    try:
        return finish(await _run_deployment(model, deployment, simulate, messages, parameters))
    finally:
        with state.lock:
            state.pending[name] -= 1


async def _run_deployment(
    model: LoadedModel,
    deployment: dict[str, Any],
    simulate: dict[str, Any],
    messages: list[dict[str, str]],
    parameters: dict[str, Any],
) -> JSONResponse:
    import anyio

    timeout_s = int(deployment.get("request_timeout_ms", 90000)) / 1000.0
    started = time.perf_counter()
    if simulate.get("delay_s"):
        # Fault drills: a deployment can be told to answer slowly or with a given reply.
        await anyio.sleep(float(simulate["delay_s"]))
    if "status_code" in simulate or "body" in simulate:
        status = int(simulate.get("status_code", 200))
        content = simulate.get("body", "")
        return JSONResponse(
            json.loads(content) if isinstance(content, str) and content[:1] in "{[" else content,
            status_code=status,
        )
    remaining = timeout_s - (time.perf_counter() - started)
    if remaining <= 0:
        return _error(
            408, "RequestTimeout", f"request exceeded request_timeout_ms={int(timeout_s * 1000)}"
        )
    try:
        text = await asyncio.wrap_future(model.batcher.submit(messages, parameters, remaining))
    except Exception as exc:  # the model container failed: Azure answers 424
        return _error(424, "ModelError", f"model failed: {exc.__class__.__name__}: {exc}")
    if time.perf_counter() - started > timeout_s:
        return _error(
            408, "RequestTimeout", f"request exceeded request_timeout_ms={int(timeout_s * 1000)}"
        )
    return JSONResponse(reply_body(text))


def main(argv: list[str]) -> int:
    """``python -m workspaces.local.endpoint_server ENDPOINT_DIR``: serve until stopped."""
    import uvicorn

    endpoint_dir = Path(argv[1]).resolve()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = read_json(endpoint_dir / "endpoint.json") or {}
    port = int(config["port"])
    app = create_app(endpoint_dir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
