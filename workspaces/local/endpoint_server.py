"""The HTTP server behind one local online endpoint (FastAPI + uvicorn on 127.0.0.1).

Run as ``python -m workspaces.local.endpoint_server <endpoint_dir>``; the endpoint manager
starts it detached, so it outlives the flow run, as an Azure endpoint does.

It speaks the Azure ML online endpoint scoring contract for chat-completion models:

- ``POST /score`` with ``Authorization: Bearer <primary or secondary key>``, optional
  ``azureml-model-deployment`` header, body ``{"input_data": {"input_string": [[messages]],
  "parameters": {...}}, "params": {}}``; answer ``{"output": "<assistant text>"}``.
- 401 for a missing or wrong key, 400 for a malformed body (naming the field), 413 for a
  body over 1 MiB, 404 when no deployment can take the request, 408 past the deployment's
  request timeout, 429 when more requests wait than the deployment takes (Azure's
  2 x max_concurrent_requests_per_instance x instance_count), 424 when the model fails.
- ``GET /health`` without a key answers what any client may know: ``status``, the
  ``endpoint`` name and each deployment's state (``deployments``). With a valid key
  (``Authorization: Bearer <primary or secondary key>``, as ``/score`` checks it) it adds
  the model folder each loaded deployment serves (``models``) and how many requests each
  is generating for, of the ``instance_count`` it generates for at once (``generating``);
  a wrong key is a 401, as for ``/score``.
- Identity, without a key and without sending a secret: a request with an
  ``X-Chatft-Challenge`` header (a fresh random value, at most 128 characters) gets
  ``proof``, the HMAC-SHA256 (hex) of the challenge followed by the endpoint id this server
  was started for, keyed by its process token (``$CHATFT_PROCESS_TOKEN``, also in the
  folder's ``process.json``). The endpoint manager checks it to tell its own server from
  any other process on the port; the token and the endpoint id are never sent.

Every request is appended to ``requests.jsonl`` (time, deployment, status, latency, caller
marker) so later flows can tell organic use from the project's own requests.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from workspaces.interface import CALLER_HEADER
from workspaces.local.state import (
    CHALLENGE_HEADER,
    MAX_CHALLENGE_CHARS,
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
MAX_CONCURRENT_PER_INSTANCE = 1
# What a 429 tells the caller to wait, in seconds (Azure sends Retry-After too).
RETRY_AFTER_S = 1

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
    """An MLflow transformers model held in memory, generating for ``instances`` requests
    at once: one per instance, as Azure's default max_concurrent_requests_per_instance."""

    def __init__(self, path: Path, instances: int = 1) -> None:
        import mlflow

        self.path = path
        components = mlflow.transformers.load_model(str(path), return_type="components")
        self.model = components["model"]
        self.tokenizer = components["tokenizer"]
        self.model.eval()
        self.instances = instances
        self.slots = threading.BoundedSemaphore(instances)
        self.generating = 0
        self.count_lock = threading.Lock()
        # A fast tokenizer must not be called from two threads at once ("Already
        # borrowed"); generation itself only reads the weights, so it runs in parallel.
        self.tokenizer_lock = threading.Lock()
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)

    def generate(
        self, messages: list[dict[str, str]], parameters: dict[str, Any], max_time: float
    ) -> str:
        import torch

        with self.tokenizer_lock:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        kwargs = dict(parameters)
        kwargs.setdefault("max_new_tokens", 200)
        if not kwargs.get("do_sample", False):
            # Greedy decoding ignores sampling knobs; drop them to avoid warnings.
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key, None)
        elif kwargs.get("temperature") == 0:
            kwargs["do_sample"] = False
            kwargs.pop("temperature")
        with self.slots:
            with self.count_lock:
                self.generating += 1
            try:
                with torch.no_grad():
                    output = self.model.generate(
                        **inputs,
                        **kwargs,
                        eos_token_id=self.stop_ids,
                        max_time=max_time,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
            finally:
                with self.count_lock:
                    self.generating -= 1
        new_tokens = output[0][inputs["input_ids"].shape[1] :]
        with self.tokenizer_lock:
            return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


class EndpointState:
    """endpoint.json and keys.json, re-read when they change; loads deployments as they appear."""

    def __init__(self, endpoint_dir: Path) -> None:
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
                Path(deployment["model_path"]),
                MAX_CONCURRENT_PER_INSTANCE * int(deployment.get("instance_count", 1)),
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
        if not header or not header.startswith("Bearer "):
            return False
        given = header.removeprefix("Bearer ").strip().encode()
        return any(
            hmac.compare_digest(given, key.encode())
            for key in (self.keys.get("primary"), self.keys.get("secondary"))
            if key
        )

    def choose_deployment(self, requested: str | None) -> str | None:
        deployments = self.config.get("deployments", {})
        if requested:
            return requested if requested in deployments else None
        traffic = {
            k: v for k, v in self.config.get("traffic", {}).items() if v > 0 and k in deployments
        }
        if not traffic:
            return None
        return random.choices(list(traffic), weights=list(traffic.values()))[0]

    def log_request(self, record: dict[str, Any]) -> None:
        with self.log_lock, open(self.dir / "requests.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def create_app(endpoint_dir: Path) -> FastAPI:
    state = EndpointState(endpoint_dir)
    threading.Thread(target=state.watch, daemon=True).start()
    app = FastAPI(title=f"local online endpoint {state.config.get('name', '')}")

    @app.get("/health", response_model=None)
    def health(request: Request) -> dict[str, Any] | JSONResponse:
        ready = {
            name: (read_json(endpoint_dir / f"deployment-{name}.json") or {}).get(
                "state", "Creating"
            )
            for name in state.config.get("deployments", {})
        }
        answer: dict[str, Any] = {
            "status": "Healthy",
            "endpoint": state.config.get("name"),
            "deployments": ready,
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
            return _error(
                401, "Unauthorized", "invalid endpoint key (Authorization: Bearer <key>)"
            )
        loaded = list(state.models.items())
        # the model folder each loaded deployment serves
        answer["models"] = {name: str(model.path) for name, model in loaded}
        # requests generating now, of how many the deployment's instances take at once
        answer["generating"] = {
            name: {"now": model.generating, "instances": model.instances}
            for name, model in loaded
        }
        return answer

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        started = time.perf_counter()
        caller = request.headers.get(CALLER_HEADER) or "organic"
        # The boot clock beside the wall clock: the teardown's idle window is measured on it,
        # so a clock step cannot make a busy endpoint look idle (see LocalEndpoints.activity).
        record: dict[str, Any] = {
            "time": time.time(),
            "since_boot": since_boot(),
            "boot_id": boot_id(),
            "request_id": str(uuid.uuid4()),
            "caller": caller,
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
        if not state.authorized(request.headers.get("authorization")):
            return finish(
                _error(
                    401,
                    "Unauthorized",
                    "missing or invalid endpoint key (Authorization: Bearer <key>)",
                )
            )
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return finish(
                _error(
                    413, "PayloadTooLarge", f"body is {len(raw)} bytes; at most {MAX_BODY_BYTES}"
                )
            )
        try:
            messages, parameters = parse_body(json.loads(raw or b"null"))
        except json.JSONDecodeError as exc:
            return finish(_error(400, "BadRequest", f"body is not valid JSON: {exc.msg}"))
        except RecursionError:
            return finish(
                _error(
                    400,
                    "BadRequest",
                    "body is nested too deeply to parse; a scoring body needs only a few levels",
                )
            )
        except BadScoringBody as exc:
            return finish(_error(400, "BadRequest", str(exc)))
        name = state.choose_deployment(request.headers.get("azureml-model-deployment"))
        if name is None:
            return finish(
                _error(
                    404,
                    "DeploymentNotFound",
                    "no deployment with positive traffic, or the named deployment does not exist",
                )
            )
        record["deployment"] = name
        deployment = state.config["deployments"][name]
        model = state.models.get(name)
        if model is None:
            return finish(
                _error(503, "DeploymentNotReady", f"deployment {name!r} is still loading its model")
            )
        simulate = deployment.get("simulate") or {}
        limit = 2 * MAX_CONCURRENT_PER_INSTANCE * int(deployment.get("instance_count", 1))
        with state.lock:
            if state.pending.get(name, 0) >= limit and not simulate.get("ignore_limit"):
                return finish(
                    _error(
                        429,
                        "TooManyRequests",
                        f"more than {limit} requests are waiting for deployment {name!r}",
                        headers={"Retry-After": str(RETRY_AFTER_S)},
                    )
                )
            state.pending[name] = state.pending.get(name, 0) + 1
        try:
            return finish(await _run_deployment(model, deployment, simulate, messages, parameters))
        finally:
            with state.lock:
                state.pending[name] -= 1

    return app


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
        text = await anyio.to_thread.run_sync(model.generate, messages, parameters, remaining)
    except Exception as exc:  # the model container failed: Azure answers 424
        return _error(424, "ModelError", f"model failed: {exc.__class__.__name__}: {exc}")
    if time.perf_counter() - started > timeout_s:
        return _error(
            408, "RequestTimeout", f"request exceeded request_timeout_ms={int(timeout_s * 1000)}"
        )
    return JSONResponse(reply_body(text))


def main(argv: list[str]) -> int:
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
