"""``LocalWorkspace``: the Workspace interface on this machine, with real parts.

Catalog: :mod:`catalog`; compute: this machine as a named compute (``Local_CPU``);
jobs: :mod:`jobs` (detached training processes); registry: :mod:`registry` (MLflow on
SQLite); endpoints: :mod:`endpoints` (FastAPI servers on 127.0.0.1).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from typing_extensions import override

from workspaces.errors import InvalidRequest, JobFailed, QuotaExceeded, ResourceNotFound
from workspaces.interface import (
    ComputeTarget,
    Deployment,
    DeploymentSpec,
    Endpoint,
    EndpointActivity,
    EndpointKeys,
    EndpointSpec,
    FinetuneJob,
    FinetuneJobSpec,
    FoundationModel,
    JobMetrics,
    ModelStage,
    PipelineInterface,
    QuotaCheck,
    RegisteredModel,
    ScoreResponse,
    VmSize,
    Workspace,
)
from workspaces.local import catalog, mlflow_store, release_log, thread_budget
from workspaces.local.endpoints import LocalEndpoints, size_problem
from workspaces.local.jobs import LocalJobs
from workspaces.local.pipeline_interface import local_interface
from workspaces.local.registry import LocalRegistry
from workspaces.local.state import (
    REQUEST_LOG,
    SERVER_LOG,
    read_json,
    settled_digest,
    write_json,
)
from workspaces.release_history import ReleaseEvent
from workspaces.ultrachat import SAMPLE_SOURCE

DEFAULT_STATE_DIR = ".workspace"


class LocalWorkspace(Workspace):
    """The embedded workspace; all state under ``state_dir`` (default ``./.workspace``)."""

    kind = "local"
    # A read is a few small files and one request to 127.0.0.1 (about a millisecond), so
    # looking four times a second costs nothing, while each second of polling interval
    # added half a second per wait (job, endpoint, deployment) to every run.
    max_poll_interval_s = 0.25
    default_foundation_model = catalog.SMOLLM2_NAME
    default_dataset = SAMPLE_SOURCE
    default_compute_name = "local-cpu"
    default_compute_size = catalog.LOCAL_SIZE
    default_instance_type = catalog.LOCAL_SIZE
    requires_gpu = False

    def __init__(
        self, state_dir: str | Path = DEFAULT_STATE_DIR, chosen_by: str | None = None,
        threads_per_process: int | None = None,
    ) -> None:
        """``chosen_by`` says which setting chose ``state_dir``, so an error about the
        folder names the setting to change (default: the caller's ``state_dir``).
        ``threads_per_process`` fixes the math threads of each job, endpoint server and
        scorer; unset, they share the cores by what computes (thread_budget.py)."""
        self.root = Path(state_dir).expanduser().resolve()
        self.chosen_by = chosen_by or "the state_dir given to LocalWorkspace"
        self.tracking_uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.artifact_root = (self.root / "mlartifacts").as_uri()
        self.threads = thread_budget.child_settings(self.root, threads_per_process)
        self.jobs = LocalJobs(self.root, self.tracking_uri, self.artifact_root, self.threads)
        self.registry = LocalRegistry(self.tracking_uri)
        self.endpoints = LocalEndpoints(self.root, self.threads)

    def __repr__(self) -> str:
        """The workspace by its state directory, for logs and errors."""
        return f"LocalWorkspace({str(self.root)!r})"

    @property
    @override
    def cache_scope(self) -> str:
        # The path alone is not enough: a state dir deleted and made again at the same path
        # is a new workspace, and cached results of the old one (a Completed job) must not
        # be taken for it.
        return f"local:{self.root}:{self._identity()}"

    def _identity(self) -> str:
        """A random id made once per state directory, kept in ``workspace-id``."""
        marker = self.root / "workspace-id"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return marker.read_text().strip()
            identity = uuid.uuid4().hex
            with os.fdopen(fd, "w") as handle:
                handle.write(identity)
        except OSError as exc:
            raise self.not_writable(marker.parent, exc) from None
        return identity

    def not_writable(self, folder: Path, exc: OSError) -> InvalidRequest:
        """Our error for a folder of the state that cannot be written, naming the setting
        that chose the state directory."""
        return InvalidRequest(
            f"local workspace folder {folder} is not writable ({exc.strerror or exc}). Make it "
            f"writable, or choose another state directory: it is {self.root}, chosen by "
            f"{self.chosen_by}"
        )

    @override
    def local_data_root(self) -> Path | None:
        return self.root / "data"

    def settled_state(self, leave_out: Collection[str] = ()) -> str | None:
        """A digest of the state directory as runs leave it (None: it cannot tell).

        It changes when anything in the workspace is made, changed or removed (a job, a
        model version, a compute, an endpoint, its deployments or traffic, a data file),
        by a run or by hand; not when serving endpoints only log their requests (their
        request and server logs, the thread board's marks). ``leave_out`` names more paths
        (relative, glob patterns) to skip.
        """
        skipped = {f"endpoints/*/{REQUEST_LOG}", f"endpoints/*/{SERVER_LOG}",
                   thread_budget.BOARD_DIR, *leave_out}
        return settled_digest(self.root, skipped)

    def check_access(self) -> str:
        """The state directory and every folder in it can be written (jobs/, computes/,
        endpoints/, data/, ...): found here, before anything is created, not as an OSError
        half-way through a run."""
        folder = self.root
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folders = [self.root, *(p for p in self.root.iterdir() if p.is_dir())]
            for folder in folders:
                probe = folder / f".write-probe-{uuid.uuid4().hex}"
                probe.write_text("ok")
                probe.unlink()
        except OSError as exc:
            raise self.not_writable(folder, exc) from None
        return f"local workspace at {self.root} (chosen by {self.chosen_by})"

    # -- foundation model ----------------------------------------------------------------
    @override
    def get_foundation_model(self, name: str, label: str = "latest") -> FoundationModel:
        return catalog.get_foundation_model(name, label)

    @override
    def prepare_foundation_model(
        self, model: FoundationModel, log: Callable[[str], None]
    ) -> str:
        return catalog.weights_location(model, self.root / "catalog", log)

    @override
    def deployment_size_problem(self, instance_type: str, instance_count: int) -> str | None:
        return size_problem(instance_type, instance_count)

    # -- compute -------------------------------------------------------------------------
    def _compute_file(self, name: str) -> Path:
        return self.root / "computes" / f"{name}.json"

    @override
    def get_compute(self, name: str) -> ComputeTarget | None:
        record = read_json(self._compute_file(name))
        return ComputeTarget(**record) if record else None

    @override
    def create_compute(self, name: str, size: str, tier: str, max_instances: int) -> ComputeTarget:
        if size.lower() not in {s.name.lower() for s in self.list_vm_sizes()}:
            raise QuotaExceeded(
                f"compute size {size} is not available on this machine; available: "
                + ", ".join(s.name for s in self.list_vm_sizes())
            )
        target = ComputeTarget(
            name=name,
            size=size,
            tier=tier,
            provisioning_state="Succeeded",
            created=True,
            max_instances=max_instances,
        )
        write_json(self._compute_file(name), target.model_dump(exclude={"created"}))
        return target

    # -- fine-tune pipeline ----------------------------------------------------------------
    @override
    def get_pipeline_interface(self, version: str | None = None) -> PipelineInterface:
        # One local pipeline: a pinned Azure version does not change what runs here.
        return local_interface()

    @override
    def list_vm_sizes(self) -> list[VmSize]:
        return [
            VmSize(
                name=catalog.LOCAL_SIZE,
                gpus=0,
                vcpus=os.cpu_count(),
                memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
            )
        ]

    @override
    def compute_quota(
        self, size: str, nodes: int, existing: ComputeTarget | None = None
    ) -> QuotaCheck:
        if nodes > 1:
            return QuotaCheck(
                tiers=[],
                refusal=f"the local workspace is one machine; num_nodes_finetune is {nodes}, "
                "allowed: 1",
            )
        return QuotaCheck(tiers=["Dedicated"], notes=["one local machine"])

    # -- jobs ----------------------------------------------------------------------------
    @override
    def find_jobs(self, request_id: str) -> list[FinetuneJob]:
        return self.jobs.find(request_id)

    @override
    def get_job(self, name: str) -> FinetuneJob | None:
        return self.jobs.get(name)

    @override
    def submit_finetune_job(self, spec: FinetuneJobSpec) -> FinetuneJob:
        if self.get_compute(spec.compute) is None:
            raise ResourceNotFound(f"compute {spec.compute!r} does not exist; create it first")
        weights = catalog.weights_location(spec.foundation_model, self.root / "catalog")
        try:
            return self.jobs.submit(spec, weights)
        except PermissionError as exc:
            # The pre-flight probed the folders; one made read-only since is still ours to say.
            raise self.not_writable(Path(exc.filename or self.jobs.root).parent, exc) from None

    @override
    def cancel_job(self, name: str) -> None:
        if self.jobs.get(name) is None:
            raise ResourceNotFound(f"job {name!r} does not exist")
        self.jobs.cancel(name)

    @override
    def get_job_metrics(self, name: str) -> JobMetrics:
        status = self.jobs.status_record(name)
        client = mlflow_store.client(self.tracking_uri)
        metrics = JobMetrics()
        if status.get("finetune_run_id"):
            run = client.get_run(status["finetune_run_id"])
            metrics.finetune = dict(run.data.metrics)
            for key in ("loss", "learning_rate", "grad_norm"):
                for point in client.get_metric_history(run.info.run_id, key):
                    metrics.finetune_history.append(
                        {"step": point.step, "metric": key, "value": point.value}
                    )
        if status.get("evaluation_run_id"):
            metrics.evaluation = dict(client.get_run(status["evaluation_run_id"]).data.metrics)
        evaluation = read_json(self.jobs.job_dir(name) / "outputs" / "evaluation.json") or {}
        metrics.samples = evaluation.get("samples", [])
        return metrics

    # -- registry ------------------------------------------------------------------------
    @override
    def get_model(self, name: str, version: str) -> RegisteredModel | None:
        return self.registry.get(name, version)

    @override
    def register_model(
        self,
        name: str,
        version: str,
        job_name: str,
        description: str,
        tags: dict[str, str],
        owner: str | None = None,
    ) -> RegisteredModel:
        job = self.jobs.get(job_name)
        if job is None:
            raise ResourceNotFound(f"job {job_name!r} does not exist")
        if job.status != "Completed":
            raise JobFailed(
                f"job {job_name!r} is {job.status}; only a Completed job's model can be registered"
            )
        status = self.jobs.status_record(job_name)
        output = self.jobs.output_path(job_name)
        run_id = status.get("mlflow_run_id")
        source = str(output)
        if run_id:
            run = mlflow_store.client(self.tracking_uri).get_run(run_id)
            source = f"{run.info.artifact_uri}/trained_model"
        # Lineage from the job's own record of the files it trained on, not from the caller.
        lineage = {
            **status.get("inputs_sha256", {}),
            "job-name": job_name,
            "job-output": f"jobs/{job_name}/outputs/trained_model",
        }
        return self.registry.register(
            name, version, source, run_id, description, {**tags, **lineage}, owner
        )

    # -- endpoints -----------------------------------------------------------------------
    @override
    def get_endpoint(self, name: str) -> Endpoint | None:
        return self.endpoints.get(name)

    @override
    def list_endpoints(self) -> list[Endpoint]:
        return self.endpoints.list()

    @override
    def begin_create_endpoint(self, spec: EndpointSpec) -> None:
        self.endpoints.begin_create(spec)

    @override
    def get_deployment(self, endpoint_name: str, name: str) -> Deployment | None:
        return self.endpoints.get_deployment(endpoint_name, name)

    @override
    def begin_create_deployment(self, spec: DeploymentSpec) -> None:
        if self.endpoints.get(spec.endpoint_name) is None:
            raise ResourceNotFound(
                f"endpoint {spec.endpoint_name!r} does not exist; create it first"
            )
        self.endpoints.begin_create_deployment(spec, self.registry.local_path(spec.model_id))

    @override
    def set_traffic(
        self,
        endpoint_name: str,
        traffic: dict[str, int] | None,
        owner: str | None = None,
        *,
        mirror: dict[str, int] | None = None,
        tags: dict[str, str] | None = None,
        claim: bool = False,
        expect: dict[str, str] | None = None,
        expect_traffic: dict[str, int] | None = None,
    ) -> Endpoint:
        if mirror:
            raise InvalidRequest(
                "mirrored traffic is an Azure ML feature; the local workspace serves live "
                "traffic only (leave rollout.mirror_percent at 0)"
            )
        self.endpoints.set_traffic(endpoint_name, traffic, owner, tags, claim, expect,
                                   expect_traffic)
        endpoint = self.endpoints.get(endpoint_name)
        assert endpoint is not None
        return endpoint

    @override
    def set_model_stage(
        self, name: str, version: str, stage: ModelStage, tags: dict[str, str] | None = None
    ) -> RegisteredModel:
        return self.registry.set_stage(name, version, stage, tags or {})

    @override
    def record_release_event(self, event: ReleaseEvent) -> None:
        found = self.registry.get(event.model, event.version) if event.model else None
        release_log.append(self.tracking_uri, self.artifact_root, event,
                           found.tags.get("mlflow-version") if found else None)

    @override
    def release_history(self, endpoint_name: str) -> list[ReleaseEvent]:
        return release_log.read(self.tracking_uri, endpoint_name)

    @override
    def evaluate_model(
        self, model: RegisteredModel, test_file: str, test_gen_file: str,
        parameters: dict[str, str],
    ) -> dict[str, float] | None:
        import json
        import subprocess
        import sys
        import tempfile

        from workspaces.local.finetune_job import training_settings
        from workspaces.local.state import child_env

        settings = training_settings(parameters)
        # The registered model is a complete folder (the endpoint server loads the same
        # ones offline): the scorer never asks the hub, nor gets the hub's credentials.
        env = child_env(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **self.threads)
        with tempfile.TemporaryDirectory(dir=self.root) as folder:
            out = Path(folder) / "metrics.json"
            done = subprocess.run(
                [sys.executable, "-m", "workspaces.local.evaluate_model",
                 str(self.registry.local_path(model.id)), test_file, test_gen_file, str(out),
                 "--max-seq-length", str(settings["max_seq_length"]),
                 "--batch-size", str(settings["per_device_eval_batch_size"])],
                env=env, capture_output=True, text=True, timeout=3600,
            )
            if done.returncode != 0:
                raise JobFailed(
                    f"scoring model {model.name}:{model.version} on the held-out files "
                    f"failed:\n{done.stderr[-2000:]}")
            return json.loads(out.read_text())

    @override
    def get_endpoint_keys(self, endpoint_name: str) -> EndpointKeys:
        return self.endpoints.keys(endpoint_name)

    @override
    def invoke(
        self,
        endpoint_name: str,
        body: dict[str, Any],
        deployment_name: str | None = None,
        caller: str | None = None,
        timeout_s: float = 90.0,
    ) -> ScoreResponse:
        return self.endpoints.invoke(endpoint_name, body, deployment_name, caller, timeout_s)

    @override
    def get_endpoint_activity(
        self, endpoint_name: str, start: datetime, end: datetime
    ) -> EndpointActivity:
        return self.endpoints.activity(endpoint_name, start, end)

    @override
    def get_deployment_logs(self, endpoint_name: str, name: str, lines: int = 50) -> str:
        return self.endpoints.logs(endpoint_name, lines)

    @override
    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        self.endpoints.begin_delete_deployment(endpoint_name, name)

    @override
    def begin_delete_endpoint(self, name: str) -> None:
        self.endpoints.begin_delete(name)

    # -- local extras (CLI, drills) --------------------------------------------------------
    def restart_endpoint(self, name: str, wait_s: float = 30.0) -> Endpoint:
        """Start a stopped endpoint's server again (after a reboot, say)."""
        self.endpoints.start_server(name)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            endpoint = self.endpoints.get(name)
            if endpoint and endpoint.healthy:
                return endpoint
            time.sleep(0.3)
        raise ResourceNotFound(f"endpoint {name!r} did not answer within {wait_s:.0f} s")
