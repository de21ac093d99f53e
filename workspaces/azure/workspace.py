"""AzureMLWorkspace: the :class:`~workspaces.interface.Workspace` on Azure ML (SDK v2).

Each method is one or a few azure-ai-ml calls, as docs/procedure.md describes them; failures are
mapped by :mod:`workspaces.azure.errors`. ``begin_*`` methods return once Azure accepted
the request; the LRO poller is left to finish on its own and callers poll ``get_*``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import (
    AmlCompute,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineEndpoint,
    OnlineRequestSettings,
    ProbeSettings,
)
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from pydantic import SecretStr
from typing_extensions import override

from workspaces.azure import activity, metrics, quota, records, scoring, sdk_internals
from workspaces.azure.absence import RecentAbsences
from workspaces.azure.clients import Clients, WorkspaceAddress
from workspaces.azure.errors import azure_errors, scrub
from workspaces.azure.pipeline import COMPONENT_NAME, build_pipeline_job
from workspaces.errors import InvalidRequest, ResourceNotFound
from workspaces.interface import (
    TAG_REQUEST,
    TAG_STAGE,
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
from workspaces.naming import check_endpoint_name
from workspaces.ownership import (
    ENDPOINT_ADVICE,
    check_expected,
    claim_for_rollout,
    foreign,
    merge_tags,
    refuse_foreign,
    refuse_foreign_model,
    refuse_take_over,
)
from workspaces.release_history import (
    TAG_LAST_RELEASE,
    ReleaseEvent,
    ring_from_tags,
    ring_tags,
    to_tags,
)

# How long a read of a Failed resource waits for its operation to report the error.
OPERATION_GRACE_S = 10.0
# Lines of a failed deployment's log read for its reason (the last two are shown).
DEPLOYMENT_LOG_LINES = 20
# How long an endpoint's deployments, as this run listed them, stand for a new listing:
# one run reads its endpoint at several steps (pre-flight, reuse, traffic) seconds apart,
# and each read listed the deployments again. Any write of this run to the endpoint's
# deployments (or to the endpoint, but for its traffic and tags, which change no
# deployment) drops the listing; waits read the deployment itself, never the listing; and
# a change made by someone else shows within this many seconds (Azure's own provisioning
# takes minutes).
LISTING_MAX_AGE_S = 30.0
IN_PROGRESS = {
    "NotStarted",
    "Queued",
    "Preparing",
    "Provisioning",
    "Starting",
    "Running",
    "Finalizing",
}


class AzureMLWorkspace(Workspace):
    """An Azure ML workspace plus the model registry its foundation models come from.

    Args:
        credential: any azure-identity credential (the credentials block builds one).
        subscription_id, resource_group, workspace_name: where the workspace is; or
        config_path: the portal's config.json (``MLClient.from_config``).
        registry_name: the system registry holding foundation models and components.
        metrics_endpoint: Azure Monitor regional metrics endpoint; default from the
            workspace location (``https://<location>.metrics.monitor.azure.com``).
        metrics_audience: the Entra ID audience of Azure Monitor tokens; default the
            public cloud's (``https://metrics.monitor.azure.com``); a sovereign cloud gives
            its own.
        client_kwargs: passed to every ``MLClient`` (e.g. ``cloud``, ``cloud_metadata``,
            ``retry_total``).
        credential_check: the credentials block's ``check(scope)``, used by the pre-flight
            so a failure lists what the credential tried and the fix for its kind.
    """

    kind = "azure"
    default_foundation_model = "Phi-3-mini-4k-instruct"
    default_dataset = "HuggingFaceH4/ultrachat_200k"
    default_compute_name = "gpu-cluster-big"
    default_compute_size = "Standard_NC6s_v3"
    default_instance_type = "Standard_NC6s_v3"
    requires_gpu = True

    def __init__(
        self,
        credential: TokenCredential,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        workspace_name: str | None = None,
        *,
        config_path: str | Path | None = None,
        registry_name: str = "azureml",
        metrics_endpoint: str | None = None,
        metrics_audience: str | None = None,
        client_kwargs: dict[str, Any] | None = None,
        credential_check: Callable[[str], str] | None = None,
    ) -> None:
        """Take the workspace's address and options; nothing is sent to Azure yet.

        The MLClients are built, and the workspace read, on first use. Raises
        ``InvalidRequest`` when neither ``config_path`` nor all three of
        ``subscription_id``, ``resource_group`` and ``workspace_name`` are given, or when
        the config file cannot be read or lacks one of them.
        """
        if config_path is not None:
            address = WorkspaceAddress.from_config(config_path)
        elif subscription_id and resource_group and workspace_name:
            address = WorkspaceAddress(subscription_id, resource_group, workspace_name)
        else:
            raise InvalidRequest(
                "give subscription_id, resource_group and workspace_name, or config_path"
            )
        self._credential = credential
        self._credential_check = credential_check
        self._clients = Clients(
            credential=credential,
            address=address,
            registry_name=registry_name,
            config_path=str(config_path) if config_path is not None else None,
            client_kwargs=dict(client_kwargs or {}),
        )
        self._metrics_endpoint = metrics_endpoint
        self._metrics_audience = metrics_audience
        self._workspace_entity: Any = None
        self._vm_sizes: list[VmSize] | None = None
        # Deletions started here, by (endpoint, deployment or None): their LRO pollers.
        self._deletions: dict[tuple[str, str | None], Any] = {}
        # Component versions read this session, by version and by "latest" (None): the
        # pre-flight and the submission then use the very same component.
        self._components: dict[str | None, Any] = {}
        # The long-running operation of each create/update we started, by resource: a
        # failed operation's error (code, message) is only ever reported there.
        self._operations: dict[str, Any] = {}
        # Where each endpoint scores and with which key, kept for the session (one flow
        # run): a smoke test sends several requests to every endpoint, and reading the
        # endpoint and its keys for each request cost two management calls a request. A
        # 401 with a kept key reads the key again once (it may have been regenerated).
        self._scoring_uris: dict[str, str] = {}
        self._scoring_keys: dict[str, SecretStr] = {}
        # Endpoints known to use key auth: their keys are listed without first reading the
        # endpoint again for its auth mode.
        self._key_auth: set[str] = set()
        # Each endpoint's deployments as this run last listed them, and when (monotonic).
        self._listings: dict[str, tuple[float, list[Deployment]]] = {}
        # Jobs, model versions and endpoints a read has just found absent (absence.py).
        self._absent = RecentAbsences()
        # Each job's experiment, as read with the job: set at submission, it never changes,
        # and reading the metrics needs it (a job read for it alone was a request a run).
        self._job_experiments: dict[str, str] = {}

    # -- identity ----------------------------------------------------------------------
    @property
    def address(self) -> WorkspaceAddress:
        """Subscription, resource group and workspace name (no secrets, no request)."""
        return self._clients.address

    @property
    def registry_name(self) -> str:
        """The registry foundation models and the fine-tune component are read from."""
        return self._clients.registry_name

    @property
    def address_scope(self) -> str:
        """Where the workspace is (no request needed); not enough for cache keys."""
        a = self.address
        return (
            f"azure:/subscriptions/{a.subscription_id}/resourceGroups/{a.resource_group}"
            f"/workspaces/{a.workspace_name}"
        )

    @property
    @override
    def cache_scope(self) -> str:
        # The address alone is not enough: a workspace deleted and made again under the
        # same name is a new workspace, and cached results of the old one (a Completed job)
        # must not be taken for it. Its immutable id (ARM properties.workspaceId) tells
        # them apart; it is read once per workspace object.
        return f"{self.address_scope}/{self._workspace_id()}"

    def _workspace_id(self) -> str:
        workspace_id = sdk_internals.workspace_id(self._workspace())
        if not workspace_id:
            raise InvalidRequest(
                f"workspace {self.address.workspace_name} reported no workspaceId; cached "
                "results could not be told apart from a deleted workspace of the same name"
            )
        return str(workspace_id)

    def __repr__(self) -> str:
        """The workspace by its address and registry, for logs; never the credential."""
        return f"AzureMLWorkspace({self.address_scope!r}, registry={self.registry_name!r})"

    def _workspace(self) -> Any:
        if self._workspace_entity is None:
            with azure_errors(f"reading workspace {self.address.workspace_name}"):
                self._workspace_entity = self._clients.ml.workspaces.get(
                    self.address.workspace_name
                )
        return self._workspace_entity

    @override
    def check_access(self) -> str:
        if self._credential_check is not None:
            self._credential_check(self._clients.arm_scope)
        else:
            with azure_errors("getting a token for Azure Resource Manager"):
                self._credential.get_token(self._clients.arm_scope)
        ws = self._workspace()
        return (
            f"Azure ML workspace {ws.name} in {ws.location} "
            f"(resource group {self.address.resource_group}) is reachable"
        )

    # -- foundation model --------------------------------------------------------------
    @override
    def get_foundation_model(self, name: str, label: str = "latest") -> FoundationModel:
        by = {"label": label} if label == "latest" else {"version": label}
        with azure_errors(f"looking up model {name} ({label}) in registry {self.registry_name}"):
            model = self._clients.registry.models.get(name, **by)
        return records.foundation_model(model)

    # -- compute -----------------------------------------------------------------------
    @override
    def get_compute(self, name: str) -> ComputeTarget | None:
        with azure_errors(f"getting compute {name}"):
            try:
                compute = self._clients.ml.compute.get(name)
            except ResourceNotFoundError:
                return None
        return records.compute_target(compute)

    @override
    def create_compute(self, name: str, size: str, tier: str, max_instances: int) -> ComputeTarget:
        cluster = AmlCompute(
            name=name,
            size=size,
            tier=_sdk_tier(tier),
            min_instances=0,
            max_instances=max_instances,
            idle_time_before_scale_down=120,
            location=self._location(),
        )
        with azure_errors(f"creating compute {name} ({size}, {tier})"):
            compute = self._clients.ml.compute.begin_create_or_update(cluster).result()
        return records.compute_target(compute, created=True)

    @override
    def list_vm_sizes(self) -> list[VmSize]:
        # The region's sizes do not change during a run: read once per workspace object.
        if self._vm_sizes is None:
            with azure_errors("listing the workspace's VM sizes"):
                sizes = list(self._clients.ml.compute.list_sizes(location=self._location()))
            self._vm_sizes = [records.vm_size(s) for s in sizes]
        return list(self._vm_sizes)

    def _location(self) -> str:
        # Given to the SDK where it would otherwise read the workspace again to learn it.
        return str(self._workspace().location)

    @override
    def compute_quota(
        self, size: str, nodes: int, existing: ComputeTarget | None = None
    ) -> QuotaCheck:
        match = next((s for s in self.list_vm_sizes() if s.name.lower() == size.lower()), None)
        if match is None or not match.family or not match.vcpus:
            return super().compute_quota(size, nodes, existing)
        with azure_errors("reading the compute quota of the workspace's region"):
            rows = quota.usage_rows(
                self._clients.ml.compute.list_usage(location=self._location()))
        return quota.check_quota(
            rows, match.name, match.family, match.vcpus, nodes,
            self.address.workspace_name, existing,
        )

    @override
    def serving_quota_problem(self, instance_type: str, instance_count: int) -> str | None:
        match = next(
            (s for s in self.list_vm_sizes() if s.name.lower() == instance_type.lower()), None)
        if match is None or not match.family or not match.vcpus:
            return None
        with azure_errors("reading the vCPU quota of the workspace's region"):
            rows = quota.usage_rows(
                self._clients.ml.compute.list_usage(location=self._location()))
        return quota.serving_room(rows, match.name, match.family, match.vcpus, instance_count)

    # -- fine-tune jobs ----------------------------------------------------------------
    @override
    def find_jobs(self, request_id: str) -> list[FinetuneJob]:
        with azure_errors(f"listing jobs of request {request_id}"):
            jobs = [
                j
                for j in self._clients.ml.jobs.list()
                if j is not None and (j.tags or {}).get(TAG_REQUEST) == request_id
            ]
        found = [self._known(records.finetune_job(j)) for j in jobs]
        return sorted(found, key=lambda j: j.created_at or datetime.min, reverse=True)

    def _known(self, job: FinetuneJob) -> FinetuneJob:
        if job.experiment_name:
            self._job_experiments[job.name] = job.experiment_name
        return job

    @override
    def get_job(self, name: str) -> FinetuneJob | None:
        with azure_errors(f"getting job {name}"):
            try:
                job = self._clients.ml.jobs.get(name)
            except ResourceNotFoundError:
                self._absent.saw("job", name, absent=True)
                return None
        self._absent.saw("job", name, absent=False)
        status = records.status_text(job.status)
        step = self._current_step(name) if status in IN_PROGRESS else None
        error = self._job_error(name) if status in ("Failed", "NotResponding") else None
        return self._known(records.finetune_job(job, current_step=step, error=error))

    def _job_error(self, name: str) -> str | None:
        """The service's error text of a failed job: its failed steps' errors (the cause),
        else the pipeline's own. Run history is the only place Azure keeps it; the SDK
        reaches it through its run operations (not public API), so any surprise there
        leaves the error unknown rather than hiding the failure itself."""
        try:
            texts = self._failed_steps(name, path="")
            if not texts:
                texts = [records.run_error(sdk_internals.run_details(self._clients.ml, name))]
        except Exception:  # noqa: BLE001 - see docstring
            return None
        return scrub("; ".join(t for t in texts if t)) or None

    def _failed_steps(self, name: str, path: str, depth: int = 0) -> list[str]:
        """The error of each deepest failed step under ``name``, named by its path
        (``chat_completion/chat_completion_finetune``): a failed step that is a pipeline
        itself only says its children failed, so its failed children are read instead."""
        ml = self._clients.ml
        # jobs.list(parent_job_name=) would read the job get_job has just read again.
        children = list(sdk_internals.run_children(ml, name))
        texts = []
        for child in children:
            if child is None or records.status_text(child.status) != "Failed":
                continue
            step = f"{path}/{child.display_name or child.name}".lstrip("/")
            # Registry pipelines nest two or three levels; the bound keeps a cycle harmless.
            deeper = self._failed_steps(child.name, step, depth + 1) if depth < 4 else []
            texts += deeper or [records.run_error(sdk_internals.run_details(ml, child.name),
                                                  step)]
        return [t for t in texts if t]

    def _current_step(self, name: str) -> str | None:
        # Run history's children of the job get_job has just read (jobs.list(parent_job_name=)
        # would read the job again first: one more request each poll of a wait).
        with azure_errors(f"listing the steps of job {name}"):
            children = list(sdk_internals.run_children(self._clients.ml, name))
        running = [
            c
            for c in children
            if c is not None and records.status_text(c.status) in IN_PROGRESS - {"NotStarted"}
        ]
        if not running:
            return None
        return running[0].display_name or running[0].name

    @override
    def submit_finetune_job(self, spec: FinetuneJobSpec) -> FinetuneJob:
        # A re-run after a crash must not submit twice: the job is looked for first, unless
        # a read found it absent a moment ago (absence.py).
        if not self._absent.take("job", spec.name):
            existing = self.get_job(spec.name)
            if existing is not None:
                return existing
        job = build_pipeline_job(spec, self._component(spec.component_version))
        self._absent.forget("job", spec.name)
        with azure_errors(f"submitting fine-tune job {spec.name}"):
            submitted = self._clients.ml.jobs.create_or_update(
                job, experiment_name=spec.experiment_name
            )
        return self._known(records.finetune_job(submitted))

    def _component(self, version: str | None) -> Any:
        if version not in self._components:
            by = {"version": version} if version else {"label": "latest"}
            what = f"getting component {COMPONENT_NAME} ({version or 'latest'}) from registry "
            with azure_errors(what + self.registry_name):
                component = self._clients.registry.components.get(name=COMPONENT_NAME, **by)
            self._components[version] = self._components[str(component.version)] = component
        return self._components[version]

    @override
    def get_pipeline_interface(self, version: str | None = None) -> PipelineInterface:
        return records.pipeline_interface(self._component(version))

    @override
    def cancel_job(self, name: str) -> None:
        with azure_errors(f"cancelling job {name}"):
            self._clients.ml.jobs.begin_cancel(name)

    @override
    def get_job_metrics(self, name: str) -> JobMetrics:
        experiment = self._job_experiments.get(name)
        if experiment is None:
            job = self.get_job(name)
            if job is None:
                raise ResourceNotFound(f"job {name} does not exist in {self.address_scope}")
            experiment = job.experiment_name
        tracking_uri = self._workspace().mlflow_tracking_uri
        scope = self._clients.arm_scope
        store = metrics.make_store(tracking_uri, lambda: self._credential.get_token(scope).token)
        with azure_errors(f"reading metrics of job {name}"):
            return metrics.read_job_metrics(store, experiment, name)

    # -- registry ----------------------------------------------------------------------
    @override
    def get_model(self, name: str, version: str) -> RegisteredModel | None:
        with azure_errors(f"getting model {name}:{version}"):
            try:
                model = self._clients.ml.models.get(name, version=version)
            except ResourceNotFoundError:
                self._absent.saw("model", f"{name}:{version}", absent=True)
                return None
        self._absent.saw("model", f"{name}:{version}", absent=False)
        return records.registered_model(model, self.address.arm_id)

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
        # Azure keeps a version's weights once registered: a version of another request is
        # refused, never answered as ours (unless a read found it absent a moment ago).
        if owner is not None and not self._absent.take("model", f"{name}:{version}"):
            existing = self.get_model(name, version)
            if existing is not None:
                refuse_foreign_model(name, version, existing.tags, owner)
                return existing
        self._absent.forget("model", f"{name}:{version}")
        model = Model(
            path=f"azureml://jobs/{job_name}/outputs/trained_model",
            type=AssetTypes.MLFLOW_MODEL,
            name=name,
            version=version,
            description=description,
            tags=tags,
        )
        with azure_errors(f"registering model {name}:{version} from job {job_name}"):
            registered = self._clients.ml.models.create_or_update(model)
        return records.registered_model(registered, self.address.arm_id)

    # -- endpoints ---------------------------------------------------------------------
    def _deployments(self, endpoint_name: str) -> list[Deployment]:
        """The endpoint's deployments: this run's listing while it stands (see
        LISTING_MAX_AGE_S), else listed anew. Each caller gets its own copies."""
        kept = self._listings.get(endpoint_name)
        if kept is None or time.monotonic() - kept[0] > LISTING_MAX_AGE_S:
            with azure_errors(f"listing deployments of endpoint {endpoint_name}"):
                deps = list(self._clients.ml.online_deployments.list(endpoint_name))
            found = [records.deployment(d) for d in deps]
            for deployment in found:
                if deployment.provisioning_state in ("Failed", "Canceled"):
                    deployment.error = self._deployment_error(endpoint_name, deployment.name)
            kept = self._listings[endpoint_name] = (time.monotonic(), found)
        return [deployment.model_copy(deep=True) for deployment in kept[1]]

    def _written(self, endpoint_name: str, deployments: bool = True) -> None:
        """This run changed the endpoint (``deployments`` False: only its traffic or tags,
        which change no deployment, so their listing stands) or its deployments (the
        listing no longer stands). An absence read before no longer stands either way."""
        if deployments:
            self._listings.pop(endpoint_name, None)
        self._absent.forget("endpoint", endpoint_name)

    def _deployment_error(self, endpoint_name: str, name: str) -> str | None:
        """Why a deployment failed: the failed operation's error when this session started
        it, else the last lines of the deployment's own log (a deployment that failed in an
        earlier session keeps no error of its own on Azure)."""
        error = self._operation_error(f"{endpoint_name}/{name}")
        if error:
            return error
        try:
            text = self._clients.ml.online_deployments.get_logs(
                name, endpoint_name, lines=DEPLOYMENT_LOG_LINES)
        except Exception:  # noqa: BLE001 - a reason is a courtesy; the state is what counts
            return None
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        return scrub("last log lines: " + " / ".join(lines[-2:]))[:300] if lines else None

    def _read_endpoint(self, name: str) -> OnlineEndpoint:
        """The endpoint from one GET (raises ResourceNotFoundError when there is none):
        ``online_endpoints.get`` would also list its deployments (sdk_internals.py)."""
        return sdk_internals.read_online_endpoint(self._clients.ml, name)

    def _await_operation(self, resource: str) -> None:
        """Wait, up to one poll interval, for a create/update this workspace started on
        ``resource``: the SDK's poller follows it in its own thread at the service's pace,
        and a read while it runs could only say the resource is still provisioning."""
        poller = self._operations.get(resource)
        if poller is not None and not poller.done():
            # An operation that failed raises here: the read that follows shows how it
            # ended, and _operation_error reports the operation's own error.
            with contextlib.suppress(Exception):
                poller.wait(timeout=self.max_poll_interval_s)

    @override
    def get_endpoint(self, name: str) -> Endpoint | None:
        self._await_operation(name)
        with azure_errors(f"getting endpoint {name}"):
            try:
                ep = self._read_endpoint(name)
            except ResourceNotFoundError:
                self._absent.saw("endpoint", name, absent=True)
                return None
        self._absent.saw("endpoint", name, absent=False)
        self._remember_scoring_uri(ep)
        endpoint = records.endpoint(ep, self._deployments(name), self.address.arm_id)
        if endpoint.provisioning_state in ("Failed", "Canceled"):
            endpoint.error = self._operation_error(name)
        return endpoint

    def _operation_error(self, resource: str) -> str | None:
        """The error of the last create/update operation of ``resource`` this workspace
        started, once it ended Failed; None when it did not fail or is not ours to see."""
        poller = self._operations.get(resource)
        if poller is None:
            return None
        try:
            # The resource reads Failed only when the operation has (nearly) ended.
            poller.wait(timeout=OPERATION_GRACE_S)
        except HttpResponseError as exc:
            return scrub(records.operation_error(exc))
        return None

    @override
    def list_endpoints(self) -> list[Endpoint]:
        with azure_errors("listing online endpoints"):
            endpoints = list(self._clients.ml.online_endpoints.list())
        found = []
        for ep in endpoints:
            self._remember_scoring_uri(ep)
            endpoint = records.endpoint(ep, [], self.address.arm_id)
            # Another team's deployments are none of our business, and a request each.
            if endpoint.managed:
                endpoint.deployments = self._deployments(ep.name)
            found.append(endpoint)
        return found

    def _remember_scoring_uri(self, endpoint: OnlineEndpoint) -> None:
        if endpoint.scoring_uri:
            self._scoring_uris[endpoint.name] = endpoint.scoring_uri
        if (endpoint.auth_mode or "").lower() == "key":
            self._key_auth.add(endpoint.name)

    def _endpoint_before_write(
        self, name: str, owner: str | None, take_over: bool = False, creating: bool = False
    ) -> OnlineEndpoint | None:
        """The endpoint read just before a write for ``owner``, or None when there is none
        (or no owner is stated); another request's is refused unless ``take_over``.

        Online endpoints offer no ETag / If-Match to make the check and the write one
        operation, so the check is a read right before the write: the window between two
        requests is one round trip, not the hours of a training run. Creating it, a read
        that found it absent a moment ago is that check (absence.py).
        """
        if owner is None or (creating and self._absent.take("endpoint", name)):
            return None
        with azure_errors(f"getting endpoint {name}"):
            try:
                existing = self._read_endpoint(name)
            except ResourceNotFoundError:
                return None
        if not take_over:
            refuse_foreign(f"endpoint {name}", dict(existing.tags or {}), owner, ENDPOINT_ADVICE)
        return existing

    @override
    def begin_create_endpoint(self, spec: EndpointSpec) -> None:
        name, description, tags = spec.name, spec.description, spec.tags
        check_endpoint_name(name, "endpoint_name")
        endpoint = ManagedOnlineEndpoint(
            name=name, auth_mode="key", description=description, tags=tags
        )
        existing = self._endpoint_before_write(name, spec.owner, spec.take_over, creating=True)
        if existing is not None and foreign(
            f"endpoint {name}", dict(existing.tags or {}), spec.owner
        ):
            refuse_take_over(f"endpoint {name}", dict(existing.tags or {}))
            # Taken over: the same endpoint (its traffic kept) tagged as this request's.
            existing.tags = dict(tags)
            existing.description = description
            endpoint = existing
        self._written(name)
        with azure_errors(f"creating endpoint {name}"):
            self._operations[name] = self._clients.ml.online_endpoints.begin_create_or_update(
                endpoint
            )

    @override
    def get_deployment(self, endpoint_name: str, name: str) -> Deployment | None:
        self._await_operation(f"{endpoint_name}/{name}")
        with azure_errors(f"getting deployment {name} of endpoint {endpoint_name}"):
            try:
                dep = self._clients.ml.online_deployments.get(name, endpoint_name)
            except ResourceNotFoundError:
                return None
        deployment = records.deployment(dep)
        if deployment.provisioning_state in ("Failed", "Canceled"):
            deployment.error = self._deployment_error(endpoint_name, name)
        kept = self._listings.get(endpoint_name)
        if kept is not None:  # what was read last is what the listing shows from now on
            fresh = deployment.model_copy(deep=True)  # the caller's copy stays its own
            kept[1][:] = [fresh if d.name == name else d for d in kept[1]]
        return deployment

    @override
    def begin_create_deployment(self, spec: DeploymentSpec) -> None:
        name, endpoint_name = spec.name, spec.endpoint_name
        check_endpoint_name(name, "deployment_name")
        self._endpoint_before_write(endpoint_name, spec.owner)
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint_name,
            model=spec.model_id,
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            liveness_probe=ProbeSettings(initial_delay=spec.liveness_initial_delay_s),
            request_settings=OnlineRequestSettings(request_timeout_ms=spec.request_timeout_ms),
            tags=spec.tags,
        )
        self._written(endpoint_name)
        with azure_errors(f"creating deployment {name} on endpoint {endpoint_name}"):
            self._operations[f"{endpoint_name}/{name}"] = (
                self._clients.ml.online_deployments.begin_create_or_update(deployment)
            )

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
        with azure_errors(f"routing traffic of endpoint {endpoint_name}"):
            ep = self._read_endpoint(endpoint_name)
        # The read the update is built from is the ownership check, just before the write.
        what = f"endpoint {endpoint_name}"
        tags_now = dict(ep.tags or {})
        check_expected(what, tags_now, dict(ep.traffic or {}), expect, expect_traffic)
        if claim and owner:
            tags_now = claim_for_rollout(what, tags_now, owner)
        else:
            refuse_foreign(what, tags_now, owner, ENDPOINT_ADVICE)
        with azure_errors(f"routing traffic of endpoint {endpoint_name}"):
            if traffic is not None:
                ep.traffic = dict(traffic)
            if mirror is not None:
                ep.mirror_traffic = dict(mirror)
            ep.tags = merge_tags(tags_now, tags)
            # A traffic update is quick; waiting keeps the returned state truthful.
            self._written(endpoint_name, deployments=False)
            updated = self._clients.ml.online_endpoints.begin_create_or_update(ep).result()
        self._remember_scoring_uri(updated)
        return records.endpoint(updated, self._deployments(endpoint_name), self.address.arm_id)

    @override
    def set_model_stage(
        self, name: str, version: str, stage: ModelStage, tags: dict[str, str] | None = None
    ) -> RegisteredModel:
        # Azure ML has no aliases for workspace models: the stage is a tag, and a stage that
        # names one version is taken from the version that held it.
        with azure_errors(f"reading model {name}"):
            versions = list(self._clients.ml.models.list(name=name))
        with azure_errors(f"recording the stage of model {name}:{version}"):
            model = self._clients.ml.models.get(name, version=version)
            if stage in ("production", "candidate"):
                for other in versions:
                    if other.version != version and (other.tags or {}).get(TAG_STAGE) == stage:
                        held = self._clients.ml.models.get(name, version=other.version)
                        held.tags = {**(held.tags or {}), TAG_STAGE: "retired"}
                        self._clients.ml.models.create_or_update(held)
            model.tags = {**(model.tags or {}), **(tags or {}), TAG_STAGE: stage}
            updated = self._clients.ml.models.create_or_update(model)
        return records.registered_model(updated, self.address.arm_id)

    @override
    def record_release_event(self, event: ReleaseEvent) -> None:
        # The endpoint keeps the newest events in a ring of tags; the read the update is
        # built from is the one just before the write, as for a traffic change.
        with azure_errors(f"recording a release on endpoint {event.endpoint}"):
            ep = self._read_endpoint(event.endpoint)
            ep.tags = merge_tags(dict(ep.tags or {}), ring_tags(dict(ep.tags or {}), event))
            self._written(event.endpoint, deployments=False)
            self._clients.ml.online_endpoints.begin_create_or_update(ep).result()
        if event.model and event.version:
            with azure_errors(f"tagging model {event.model}:{event.version}"):
                model = self._clients.ml.models.get(event.model, version=event.version)
                model.tags = {**(model.tags or {}), TAG_LAST_RELEASE: to_tags(event)[0]}
                self._clients.ml.models.create_or_update(model)

    @override
    def release_history(self, endpoint_name: str) -> list[ReleaseEvent]:
        with azure_errors(f"reading the release history of endpoint {endpoint_name}"):
            try:
                ep = self._read_endpoint(endpoint_name)
            except ResourceNotFoundError:
                return []
        return ring_from_tags(endpoint_name, dict(ep.tags or {}))

    @override
    def get_endpoint_keys(self, endpoint_name: str) -> EndpointKeys:
        with azure_errors(f"reading the keys of endpoint {endpoint_name}"):
            if endpoint_name in self._key_auth:
                # get_keys reads the endpoint for its auth mode before listing the keys; the
                # mode is known here: one request instead of two (sdk_internals.py).
                keys = sdk_internals.endpoint_keys(self._clients.ml, endpoint_name)
            else:
                keys = self._clients.ml.online_endpoints.get_keys(endpoint_name)
        return EndpointKeys(primary=keys.primary_key, secondary=keys.secondary_key)

    @override
    def invoke(
        self,
        endpoint_name: str,
        body: dict[str, Any],
        deployment_name: str | None = None,
        caller: str | None = None,
        timeout_s: float = 90.0,
    ) -> ScoreResponse:
        kept_key = endpoint_name in self._scoring_keys
        uri, key = self._scoring_target(endpoint_name)
        response = scoring.score(uri, key.get_secret_value(), body, deployment_name, caller,
                                 timeout_s)
        if response.status_code == 401 and kept_key:
            self._scoring_keys.pop(endpoint_name, None)
            uri, key = self._scoring_target(endpoint_name)
            response = scoring.score(uri, key.get_secret_value(), body, deployment_name,
                                     caller, timeout_s)
        return response

    def _scoring_target(self, endpoint_name: str) -> tuple[str, SecretStr]:
        """The endpoint's scoring URI and primary key, read once per session."""
        uri = self._scoring_uris.get(endpoint_name)
        if uri is None:
            with azure_errors(f"getting endpoint {endpoint_name}"):
                self._remember_scoring_uri(self._read_endpoint(endpoint_name))
            uri = self._scoring_uris.get(endpoint_name)
            if uri is None:
                raise InvalidRequest(
                    f"endpoint {endpoint_name} has no scoring URI yet; wait for it"
                )
        key = self._scoring_keys.get(endpoint_name)
        if key is None:
            key = self._scoring_keys[endpoint_name] = self.get_endpoint_keys(
                endpoint_name
            ).primary
        return uri, key

    @override
    def get_endpoint_activity(
        self, endpoint_name: str, start: datetime, end: datetime
    ) -> EndpointActivity:
        endpoint_id = f"{self.address.arm_id}/onlineEndpoints/{endpoint_name}"
        try:
            client = self._metrics_client()
        except Exception as exc:  # noqa: BLE001 - unknown activity must never look like idle
            return EndpointActivity.unreadable(
                endpoint_name, start, end,
                f"Azure Monitor client unavailable: {exc.__class__.__name__}",
            )
        return activity.read_activity(client, endpoint_id, endpoint_name, start, end)

    @override
    def get_endpoints_activity(
        self, endpoint_names: list[str], start: datetime, end: datetime
    ) -> dict[str, EndpointActivity]:
        if not endpoint_names:
            return {}
        try:
            client = self._metrics_client()
        except Exception as exc:  # noqa: BLE001 - unknown activity must never look like idle
            reason = f"Azure Monitor client unavailable: {exc.__class__.__name__}"
            return {n: EndpointActivity.unreadable(n, start, end, reason) for n in endpoint_names}
        ids = {n: f"{self.address.arm_id}/onlineEndpoints/{n}" for n in endpoint_names}
        return activity.read_activities(client, ids, start, end)

    def _metrics_client(self) -> Any:
        from azure.monitor.querymetrics import MetricsClient

        endpoint = self._metrics_endpoint or (
            f"https://{self._workspace().location}.metrics.monitor.azure.com"
        )
        kwargs = {"audience": self._metrics_audience} if self._metrics_audience else {}
        return MetricsClient(endpoint, self._credential, **kwargs)

    @override
    def get_deployment_logs(self, endpoint_name: str, name: str, lines: int = 50) -> str:
        with azure_errors(f"reading logs of deployment {name} on {endpoint_name}"):
            return self._clients.ml.online_deployments.get_logs(name, endpoint_name, lines=lines)

    @override
    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        self._written(endpoint_name)
        with azure_errors(f"deleting deployment {name} of endpoint {endpoint_name}"):
            poller = self._clients.ml.online_deployments.begin_delete(
                name=name, endpoint_name=endpoint_name
            )
        self._deletions[(endpoint_name, name)] = poller

    @override
    def begin_delete_endpoint(self, name: str) -> None:
        self._written(name)
        with azure_errors(f"deleting endpoint {name}"):
            poller = self._clients.ml.online_endpoints.begin_delete(name=name)
        self._deletions[(name, None)] = poller
        self._scoring_uris.pop(name, None)
        self._scoring_keys.pop(name, None)
        self._key_auth.discard(name)

    @override
    def deletion_finished(self, endpoint_name: str, deployment_name: str | None = None) -> bool:
        # The SDK's poller follows the DELETE's Location in its own thread, waiting as long
        # as the service's Retry-After asks; asking it whether it is done costs no request.
        poller = self._deletions.get((endpoint_name, deployment_name))
        if poller is None:  # not started here (e.g. it was gone already): read it once
            return super().deletion_finished(endpoint_name, deployment_name)
        if not poller.done():
            return False
        what = (f"deployment {deployment_name} of endpoint {endpoint_name}" if deployment_name
                else f"endpoint {endpoint_name}")
        with azure_errors(f"deleting {what}"):
            poller.result()  # raises the service's error when the deletion failed
        del self._deletions[(endpoint_name, deployment_name)]
        return True


def _sdk_tier(tier: str) -> str:
    # The SDK turns "LowPriority" into "Lowpriority" on the wire; its snake_case names are safe.
    return {"lowpriority": "low_priority", "low_priority": "low_priority"}.get(
        tier.lower().replace("-", "_"), "dedicated"
    )

