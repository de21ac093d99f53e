"""Local online endpoints: state on disk, a detached server process per endpoint.

An endpoint is a folder ``<state>/endpoints/<name>`` with ``endpoint.json`` (description,
tags, port, deployments, traffic), ``keys.json`` (0600), ``requests.jsonl`` (the request
log), ``server.log`` and ``process.json`` (the server process: pid, start time, identity
token). The server (:mod:`endpoint_server`) re-reads the JSON when it changes, so
deployments and traffic take effect without a restart; it exits once the folder names
another endpoint or another server process. A server counts as the endpoint's own only
when its ``/health`` answers a fresh challenge with the proof that the record's token and
the endpoint's id make; neither is ever sent.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import socket
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from workspaces.errors import InvalidRequest, QuotaExceeded, ResourceNotFound
from workspaces.interface import (
    CALLER_HEADER,
    Deployment,
    DeploymentSpec,
    Endpoint,
    EndpointActivity,
    EndpointKeys,
    EndpointSpec,
    ScoreResponse,
)
from workspaces.local.state import (
    CHALLENGE_HEADER,
    REQUEST_LOG,
    SERVER_LOG,
    identity_proof,
    locked,
    process_alive,
    process_token,
    read_json,
    seconds_since,
    spawn_detached,
    stamp,
    stop_processes,
    wall_time,
    write_json,
)
from workspaces.naming import check_endpoint_name
from workspaces.ownership import (
    ENDPOINT_ADVICE,
    check_expected,
    claim_for_rollout,
    foreign,
    merge_tags,
    refuse_foreign,
    refuse_take_over,
)

SERVER_MODULE = "workspaces.local.endpoint_server"
LOCAL_INSTANCE_TYPES = ("Local_CPU",)
# An instance is a generation slot in the endpoint's one server process (the weights are
# shared); more slots than CPU cores would only queue on the cores.
MAX_LOCAL_INSTANCES = max(1, os.cpu_count() or 1)


def size_problem(instance_type: str, instance_count: int) -> str | None:
    """Why a deployment of this size cannot be served locally (None when it can)."""
    if instance_type not in LOCAL_INSTANCE_TYPES:
        return (f"instance_type {instance_type!r} is not served locally; allowed: "
                + ", ".join(LOCAL_INSTANCE_TYPES))
    if not 1 <= instance_count <= MAX_LOCAL_INSTANCES:
        return (f"instance_count {instance_count}: the local workspace serves a deployment "
                f"with 1 to {MAX_LOCAL_INSTANCES} instances (one per CPU core of this machine)")
    return None


# One HTTP client for every local request of the process, shared by threads (httpx.Client
# is thread-safe). ``httpx.post`` builds a client per call, and each new client loads the
# CA bundle into an SSL context (tens of ms of CPU under the GIL, even for plain http):
# with a smoke test's 64 probe threads that serialised into seconds per wave.
_CLIENT: httpx.Client | None = None
_CLIENT_LOCK = threading.Lock()
# Connections kept open at once: the smoke test's MAX_CONCURRENCY_LIMIT probes, plus room.
_CLIENT_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)


def http_client() -> httpx.Client:
    """The process's shared client for local endpoints (created on first use)."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            # Only 127.0.0.1 is ever called: no proxies from the environment, no TLS.
            _CLIENT = httpx.Client(limits=_CLIENT_LIMITS, trust_env=False)
        return _CLIENT


def checked_traffic(traffic: dict[str, int], config: dict[str, Any]) -> dict[str, int]:
    """Live shares as Azure takes them: existing deployments, 0-100 each, adding up to 100."""
    unknown = sorted(set(traffic) - set(config["deployments"]))
    if unknown:
        raise InvalidRequest(
            f"traffic names deployments that do not exist: {', '.join(unknown)}; "
            f"existing: {', '.join(sorted(config['deployments'])) or 'none'}"
        )
    if any(not 0 <= v <= 100 for v in traffic.values()) or sum(traffic.values()) not in (0, 100):
        raise InvalidRequest(f"traffic {traffic} must be percentages that add up to 100")
    return {k: int(v) for k, v in traffic.items() if v > 0}


# What a deployment answered as its own failure (not the caller's: 400, 401, 413, 429).
SERVER_ERRORS = frozenset({408, 424})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _created() -> dict[str, Any]:
    """The creation stamp of an endpoint or deployment: shown by wall clock, aged by boot."""
    now = stamp()
    return {"created_at": now["at"], "created_since_boot": now["since_boot"],
            "boot_id": now["boot_id"]}


def _age_s(record: dict[str, Any]) -> float:
    # Judged on the boot clock: a clock stepped forward must not fail a server that is
    # still starting, nor one stepped back keep a dead one Creating for an hour.
    return seconds_since(record, "created_at", "created_since_boot")


class LocalEndpoints:
    """The local workspace's online endpoints: one folder and one server process each.

    ``<root>/endpoints/<name>/`` holds ``endpoint.json`` (config, deployments, traffic,
    tags; changed only under the folder's lock), ``keys.json``, the server's process
    record, its log and its request log.
    """

    def __init__(self, root: Path, threads: dict[str, str] | None = None) -> None:
        """Endpoints of the workspace whose state directory is ``root``; ``threads``: the
        thread budget's environment for the servers (thread_budget.py)."""
        self.root = root / "endpoints"
        self.threads = threads or {}

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _config(self, name: str) -> dict[str, Any] | None:
        return read_json(self._dir(name) / "endpoint.json")

    def _require(self, name: str) -> dict[str, Any]:
        config = self._config(name)
        if config is None:
            raise ResourceNotFound(f"endpoint {name!r} does not exist in the local workspace")
        return config

    def _alive(self, name: str) -> bool:
        return process_alive(self._dir(name))

    def _update(self, name: str, change) -> dict[str, Any]:
        with locked(self._dir(name) / ".lock"):
            config = self._require(name)
            change(config)
            write_json(self._dir(name) / "endpoint.json", config)
            return config

    # -- endpoints ---------------------------------------------------------------------
    def begin_create(self, spec: EndpointSpec) -> None:
        """Create the endpoint and start its server; an existing one is claimed for
        ``spec.owner`` (and its server brought back if dead)."""
        name, description, tags = spec.name, spec.description, spec.tags
        check_endpoint_name(name)
        directory = self._dir(name)
        with locked(self.root / ".create.lock"):
            if self._config(name) is not None:
                config = self._claim(spec)
                starting = config.get("provisioning_state") == "Creating" and self._alive(name)
                if not starting and self._health(name, config) is None:
                    # A dead (or not our) server is brought back, as `restart` does.
                    self.start_server(name)
                return
            directory.mkdir(parents=True, exist_ok=True)
            write_json(
                directory / "keys.json",
                {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)},
                private=True,
            )
            write_json(
                directory / "endpoint.json",
                {
                    "name": name,
                    "id": uuid.uuid4().hex,
                    "description": description,
                    "tags": tags,
                    "auth_mode": "key",
                    "port": _free_port(),
                    **_created(),
                    "provisioning_state": "Creating",
                    "traffic": {},
                    "deployments": {},
                },
            )
            self.start_server(name)

    def _claim(self, spec: EndpointSpec) -> dict[str, Any]:
        """The existing endpoint's config, once it is sure to be ``spec.owner``'s (checked
        and, with ``take_over``, re-tagged under the endpoint's lock)."""
        what = f"endpoint {spec.name}"

        def claim(config: dict[str, Any]) -> None:
            tags_now = config.get("tags", {})
            if spec.take_over and foreign(what, tags_now, spec.owner):
                refuse_take_over(what, tags_now)
                config.update(tags=dict(spec.tags), description=spec.description)
            else:
                refuse_foreign(what, tags_now, spec.owner, ENDPOINT_ADVICE)

        return self._update(spec.name, claim) if spec.owner else self._require(spec.name)

    def start_server(self, name: str) -> None:
        """Start the endpoint's server, or restart it when it is dead or not ours.

        Every process of this endpoint, recorded or not, is ended first; deployments load
        again, so their state goes back to Creating until the new server has them.
        """
        directory = self._dir(name)
        config = self._require(name)
        # A long wait: a busy server that is ours must not be taken for a dead one.
        if self._health(name, config, timeout_s=10.0) is not None:
            return
        stop_processes(directory, SERVER_MODULE)
        # The old server's readiness files would report its deployments ready until the new
        # server starts and removes them; a flow re-run then scored a model still loading.
        for stale in directory.glob("deployment-*.json"):
            stale.unlink(missing_ok=True)

        def reset(c: dict[str, Any]) -> None:
            c.setdefault("id", uuid.uuid4().hex)
            c.update(provisioning_state="Creating", **_created())
            for deployment in c.get("deployments", {}).values():
                deployment.update(provisioning_state="Creating", error=None, **_created())

        self._update(name, reset)
        spawn_detached(
            SERVER_MODULE, directory, SERVER_LOG,
            HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **self.threads,
        )

    def _health(
        self, name: str, config: dict[str, Any], timeout_s: float = 2.0
    ) -> dict[str, Any] | None:
        """The keyless health answer when the server proves it is this endpoint's recorded one.

        The proof answers a fresh challenge with the token of the folder's process record
        and the endpoint's id (see :mod:`endpoint_server`): any other process on the port,
        a server of an earlier endpoint of this name, or one no record knows fails it. No
        key is sent, so a key rotation the server has not read yet never makes it a stranger.
        """
        token = process_token(self._dir(name))
        if not config.get("port") or not token or not config.get("id"):
            return None
        challenge = secrets.token_hex(16)
        try:
            response = http_client().get(f"http://127.0.0.1:{config['port']}/health",
                                         headers={CHALLENGE_HEADER: challenge},
                                         timeout=timeout_s)
            answer = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(answer, dict) or not isinstance(answer.get("proof"), str):
            return None
        expected = identity_proof(token, challenge, config["id"])
        if not hmac.compare_digest(answer["proof"].encode(), expected.encode()):
            return None
        return answer

    def get(self, name: str) -> Endpoint | None:
        """The endpoint as its server answers now (None: no such endpoint); a Creating
        endpoint whose server proves itself is Succeeded, one whose server died Failed."""
        config = self._config(name)
        if config is None:
            return None
        alive = self._alive(name)
        health = self._health(name, config) if alive else None
        state = config.get("provisioning_state", "Unknown")
        if state == "Creating":
            if health is not None:
                state = "Succeeded"
                self._update(name, lambda c: c.update(provisioning_state="Succeeded"))
            elif not alive and _age_s(config) > 10:
                state = "Failed"
                self._update(name, lambda c: c.update(provisioning_state="Failed"))
        deployments = [self._deployment(name, d, config, health) for d in config["deployments"]]
        return Endpoint(
            name=name,
            scoring_uri=f"http://127.0.0.1:{config['port']}/score",
            auth_mode="key",
            provisioning_state=state,
            description=config.get("description", ""),
            traffic=dict(config.get("traffic", {})),
            tags=dict(config.get("tags", {})),
            # On today's wall clock (see wall_time): the teardown's grace period compares it
            # with now, and a clock step must not age a new endpoint.
            created_at=datetime.fromtimestamp(
                wall_time(config, "created_at", "created_since_boot"), UTC
            ),
            healthy=health is not None,
            url=f"http://127.0.0.1:{config['port']}/docs",
            deployments=deployments,
        )

    def list(self) -> list[Endpoint]:
        """Every endpoint of the workspace."""
        if not self.root.is_dir():
            return []
        found = [
            self.get(p.name) for p in sorted(self.root.iterdir()) if (p / "endpoint.json").exists()
        ]
        return [e for e in found if e is not None]

    def begin_delete(self, name: str) -> None:
        """Delete the endpoint after ending every server process of it, recorded or not."""
        self._require(name)
        stop_processes(self._dir(name), SERVER_MODULE)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def stop(self, name: str) -> bool:
        """Stop every server of the endpoint but keep it (a restart serves it again)."""
        self._require(name)
        return stop_processes(self._dir(name), SERVER_MODULE) > 0

    # -- deployments -------------------------------------------------------------------
    def _deployment(
        self, endpoint: str, name: str, config: dict[str, Any], health: dict[str, Any] | None
    ) -> Deployment:
        record = config["deployments"][name]
        status = read_json(self._dir(endpoint) / f"deployment-{name}.json") or {}
        state = record.get("provisioning_state", "Creating")
        error = record.get("error")
        if state == "Creating" and status.get("state") in ("Succeeded", "Failed"):
            state = status["state"]
            error = status.get("error")
        elif (
            state == "Creating"
            and _age_s(record) > 15
            and not self._alive(endpoint)
        ):
            state = "Failed"
            error = "the endpoint's server is not running; last log lines:\n" + _tail(
                self._dir(endpoint) / SERVER_LOG, 10
            )
        if state != record.get("provisioning_state", "Creating"):
            self._update(
                endpoint,
                lambda c: c["deployments"][name].update(provisioning_state=state, error=error),
            )
        return Deployment(
            name=name,
            endpoint_name=endpoint,
            model_id=record["model_id"],
            instance_type=record["instance_type"],
            instance_count=record["instance_count"],
            provisioning_state=state,
            error=error,
            tags=record.get("tags", {}),
        )

    def get_deployment(self, endpoint: str, name: str) -> Deployment | None:
        """A deployment of ``endpoint`` (None: no such endpoint or deployment)."""
        config = self._config(endpoint)
        if config is None or name not in config["deployments"]:
            return None
        return self._deployment(endpoint, name, config, None)

    def begin_create_deployment(self, spec: DeploymentSpec, model_path: Path) -> None:
        """Add the deployment of the MLflow model at ``model_path`` (the server loads it);
        an existing one of that name is kept. A bad size or a foreign endpoint is refused."""
        endpoint, name, model_id = spec.endpoint_name, spec.name, spec.model_id
        instance_type, instance_count = spec.instance_type, spec.instance_count
        check_endpoint_name(name, field="deployment_name")
        problem = size_problem(instance_type, instance_count)
        if problem:
            # an unknown size is a bad request; too many instances, a quota refusal
            refusal = QuotaExceeded if instance_type in LOCAL_INSTANCE_TYPES else InvalidRequest
            raise refusal(problem)
        if not (model_path / "MLmodel").exists():
            raise InvalidRequest(f"model {model_id} has no MLflow model at {model_path}")

        def add(config: dict[str, Any]) -> None:
            refuse_foreign(
                f"endpoint {endpoint}", config.get("tags", {}), spec.owner, ENDPOINT_ADVICE
            )
            if name in config["deployments"]:
                return
            config["deployments"][name] = {
                "model_id": model_id,
                "model_path": str(model_path),
                "instance_type": instance_type,
                "instance_count": instance_count,
                "tags": spec.tags,
                "request_timeout_ms": spec.request_timeout_ms,
                "liveness_initial_delay_s": spec.liveness_initial_delay_s,
                "provisioning_state": "Creating",
                **_created(),
            }

        self._update(endpoint, add)
        if not self._alive(endpoint):
            self.start_server(endpoint)

    def begin_delete_deployment(self, endpoint: str, name: str) -> None:
        """Remove a deployment that takes no traffic (the server unloads it)."""

        def remove(config: dict[str, Any]) -> None:
            if name not in config["deployments"]:
                raise ResourceNotFound(
                    f"deployment {name!r} does not exist on endpoint {endpoint!r}"
                )
            if config.get("traffic", {}).get(name, 0) > 0:
                raise InvalidRequest(
                    f"deployment {name!r} still takes {config['traffic'][name]}% of traffic; "
                    "route it elsewhere first"
                )
            del config["deployments"][name]
            config.get("traffic", {}).pop(name, None)

        self._update(endpoint, remove)
        (self._dir(endpoint) / f"deployment-{name}.json").unlink(missing_ok=True)

    def set_simulation(self, endpoint: str, name: str, simulate: dict[str, Any] | None) -> None:
        """Fault drill: make a deployment answer slowly or with a fixed reply (None clears)."""
        self._update(endpoint, lambda c: c["deployments"][name].update(simulate=simulate or {}))

    def set_traffic(
        self,
        endpoint: str,
        traffic: dict[str, int] | None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
        claim: bool = False,
        expect: dict[str, str] | None = None,
        expect_traffic: dict[str, int] | None = None,
    ) -> None:
        """Set the traffic and merge ``tags`` in one write under the endpoint's lock, as
        :meth:`workspaces.interface.Workspace.set_traffic` describes."""

        def route(config: dict[str, Any]) -> None:
            what = f"endpoint {endpoint}"
            tags_now = config.get("tags", {})
            check_expected(what, tags_now, config.get("traffic", {}), expect, expect_traffic)
            if claim and owner:
                tags_now = claim_for_rollout(what, tags_now, owner)
            else:
                refuse_foreign(what, tags_now, owner, ENDPOINT_ADVICE)
            if traffic is not None:
                config["traffic"] = checked_traffic(traffic, config)
            config["tags"] = merge_tags(tags_now, tags)

        self._update(endpoint, route)

    # -- keys, scoring, activity -------------------------------------------------------
    def keys(self, name: str) -> EndpointKeys:
        """The endpoint's two keys."""
        self._require(name)
        keys = read_json(self._dir(name) / "keys.json") or {}
        return EndpointKeys(primary=keys["primary"], secondary=keys["secondary"])

    def invoke(
        self,
        name: str,
        body: dict[str, Any],
        deployment: str | None,
        caller: str | None,
        timeout_s: float,
    ) -> ScoreResponse:
        """Send ``body`` to the endpoint's scoring URI with its key, as a client would."""
        config = self._require(name)
        if deployment and deployment not in config["deployments"]:
            raise InvalidRequest(
                f"deployment {deployment!r} does not exist on endpoint {name!r}; existing: "
                + (", ".join(sorted(config["deployments"])) or "none")
            )
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.keys(name).primary.get_secret_value()}",
        }
        if deployment:
            headers["azureml-model-deployment"] = deployment
        if caller:
            headers[CALLER_HEADER] = caller
        url = f"http://127.0.0.1:{config['port']}/score"
        started = time.perf_counter()
        response = http_client().post(url, content=json.dumps(body), headers=headers,
                                      timeout=timeout_s)
        return ScoreResponse(
            status_code=response.status_code,
            body=response.text,
            latency_ms=(time.perf_counter() - started) * 1000,
            headers={k: v for k, v in response.headers.items() if k.lower() != "authorization"},
        )

    def activity(self, name: str, start: datetime, end: datetime) -> EndpointActivity:
        """Requests in [start, end) from the server's request log, by caller and deployment
        (refused requests, 401, not counted)."""
        self._require(name)
        log = self._dir(name) / REQUEST_LOG
        result = EndpointActivity(endpoint_name=name, start=start, end=end)
        if not log.exists():
            return result
        begin, finish = start.timestamp(), end.timestamp()
        last = last_organic = None
        latencies: dict[str, list[float]] = {}
        try:
            lines = log.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            return EndpointActivity.unreadable(name, start, end, f"request log unreadable: {exc}")
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            # Placed on today's wall clock by its time since boot: after a clock step, a
            # request of ten minutes ago is still ten minutes old to the idle window.
            record["time"] = wall_time(record, "time", "since_boot")
            if record.get("status") == 401 or not begin <= record["time"] < finish:
                continue
            caller = record.get("caller") or "organic"
            result.total_requests += 1
            result.requests_by_caller[caller] = result.requests_by_caller.get(caller, 0) + 1
            if record.get("deployment"):
                d = record["deployment"]
                result.requests_by_deployment[d] = result.requests_by_deployment.get(d, 0) + 1
                status = int(record.get("status") or 0)
                if status >= 500 or status in SERVER_ERRORS:
                    result.errors_by_deployment[d] = result.errors_by_deployment.get(d, 0) + 1
                elif status == 200 and record.get("latency_ms") is not None:
                    latencies.setdefault(d, []).append(float(record["latency_ms"]))
            last = max(last or 0, record["time"])
            if caller == "organic":
                last_organic = max(last_organic or 0, record["time"])
        result.latency_ms_by_deployment = {d: statistics.median(v) for d, v in latencies.items()}
        result.last_request_at = datetime.fromtimestamp(last, UTC) if last else None
        result.last_organic_request_at = (
            datetime.fromtimestamp(last_organic, UTC) if last_organic else None
        )
        return result

    def logs(self, name: str, lines: int) -> str:
        """The last ``lines`` of the server's log."""
        self._require(name)
        return _tail(self._dir(name) / SERVER_LOG, lines)
