"""State and routes of the fake Azure ML (ARM, registry MFE, run history, MLflow, blob,
scoring, Azure Monitor), shaped on the official REST examples copied into ``examples/``."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.azure.fake_azureml import mlflow_api, signin
from tests.azure.fake_azureml.server import FakeServer, Recorded, Response

MLS = "providers/Microsoft.MachineLearningServices"
# Copied into the test tree: the tests read nothing outside the repository.
EXAMPLES = Path(__file__).parent / "examples"
# The inputs of chat_completion_pipeline 0.0.57 as its spec declares them (Azure/azureml-assets
# assets/training/finetune_acft_hf_nlp/components/pipeline_components/chat_completion/
# spec.yaml, commit 034b4c47): type, default, optional, enum, min; descriptions and the
# pipeline's jobs left out. The registry serves this as the component version's spec.
COMPONENT_SPEC = Path(__file__).parent / "chat_completion_pipeline_0.0.57.json"
JOB_PROGRESS = ("NotStarted", "Running", "Running", "Completed")
FAILED_PROGRESS = ("NotStarted", "Running", "Failed")
METRIC = "RequestsPerMinute"
STEPS = ("model_import", "preprocess", "finetune", "model_evaluation")
# The registry's chat_completion_pipeline 0.0.57 as Azure runs it (its spec.yaml's jobs, in
# order): the job holds one node, named as pipeline.py names it, and the node these steps.
REGISTRY_NODE = "chat_completion"
REGISTRY_STEPS = ("ft_nlp_common_validation", "chat_completion_model_import",
                  "chat_completion_datapreprocess", "chat_completion_finetune",
                  "chat_completion_model_converter", "model_prediction", "compute_metrics")


REGIONAL_DEDICATED = "Total Cluster Dedicated Regional vCPUs"
REGIONAL_LOW_PRIORITY = "Total Cluster LowPriority Regional vCPUs"


def quota_row(family: str, tier: str = "Dedicated") -> str:
    """The usage row of a VM family, as Azure names it: ``standardNCSv3Family``,
    ``LowPriority`` -> ``Standard NCSv3 Family Cluster LowPriority vCPUs``."""
    core = family.removeprefix("standard").removesuffix("Family")
    return f"Standard {core} Family Cluster {tier} vCPUs"


def default_quota() -> dict[str, tuple[int, int]]:
    return {
        REGIONAL_DEDICATED: (8, 148),
        quota_row("standardNCSv3Family"): (0, 48),
        quota_row("standardDSv2Family"): (8, 100),
        REGIONAL_LOW_PRIORITY: (0, 100),
        quota_row("standardNCSv3Family", "LowPriority"): (0, -1),
        quota_row("standardDSv2Family", "LowPriority"): (0, -1),
    }


def example(name: str, status: str = "200") -> dict[str, Any]:
    """The response body of a REST example file."""
    data = json.loads((EXAMPLES / name).read_text())
    return copy.deepcopy(data["responses"][status]["body"])


def arm_error(status: int, code: str, message: str, **headers: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}}, headers)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class FakeJob:
    body: dict[str, Any]
    progress: tuple[str, ...]
    polls: int = 0

    @property
    def status(self) -> str:
        return self.progress[min(self.polls, len(self.progress) - 1)]


@dataclass
class FakeAzureML:
    """The fake's state. Tests read ``requests`` and change state or inject faults."""

    subscription: str = "00000000-1111-2222-3333-444444444444"
    resource_group: str = "rg-chatft"
    workspace: str = "ws-chatft"
    location: str = "eastus"
    registry: str = "azureml"
    registry_subscription: str = "99999999-8888-7777-6666-555555555555"
    registry_resource_group: str = "registry-builtin-prod-eastus-01"
    storage_account: str = "fakestore"
    # ARM properties.workspaceId: immutable, new whenever the workspace is made again
    workspace_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    server: FakeServer | None = None
    registry_models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    components: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    computes: dict[str, dict[str, Any]] = field(default_factory=dict)
    vm_sizes: list[dict[str, Any]] = field(default_factory=list)
    # vCPU quota of the region by usage row name, as Azure names the rows (Usage_list.json):
    # (in use, limit); -1 = no limit of its own (per-family LowPriority rows).
    quota: dict[str, tuple[int, int]] = field(default_factory=lambda: default_quota())
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    job_progress: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # job name -> error of its failing finetune step, as run history reports it
    job_errors: dict[str, dict[str, str]] = field(default_factory=dict)
    # job name -> the finetune step's own steps: the step is then a pipeline of its own
    # (as chat_completion is in the registry's pipeline), and the last of these is the one
    # that fails when the job fails, carrying job_errors' text
    nested_steps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    experiments: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_points: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    # Jobs run as Azure runs the registry's pipeline (REGISTRY_NODE holding REGISTRY_STEPS,
    # the finetune step logging what HF Trainer logs) instead of the four flat STEPS.
    registry_layout: bool = False
    # The most rows one MLflow answer holds, whatever the client asks (None: as asked).
    mlflow_max_page: int | None = None
    scoring_requests: list[Recorded] = field(default_factory=list)
    deployment_logs: str = "Booting worker with pid: 42\nModel loaded."
    # Scoring answers after this delay; the peaks say how many requests were in flight at
    # once, in all and per endpoint (tests of the smoke test's fan-out read them).
    score_delay_s: float = 0.0
    scoring_peak: int = 0
    scoring_peak_per_endpoint: dict[str, int] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)
    _score_lock: threading.Lock = field(default_factory=threading.Lock)
    # A deletion's Location answers 202 this many times (with Retry-After) before 200.
    delete_polls: int = 0
    delete_retry_after_s: str = "1"
    _delete_polls_left: dict[str, int] = field(default_factory=dict)
    # resource name -> error the next create/update operation of it ends Failed with
    failing_operations: dict[str, dict[str, str]] = field(default_factory=dict)
    _operations: dict[str, str] = field(default_factory=dict)
    _operation_errors: dict[str, dict[str, str]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)

    # -- addresses -------------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self.server is not None
        return f"https://localhost:{self.server.port}"

    @property
    def ws_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/"
            f"{MLS}/workspaces/{self.workspace}"
        )

    @property
    def registry_path(self) -> str:
        return (
            f"/mferp/managementfrontend/subscriptions/{self.registry_subscription}/resourceGroups/"
            f"{self.registry_resource_group}/{MLS}/registries/{self.registry}"
        )

    @property
    def requests(self) -> list[Recorded]:
        assert self.server is not None
        return self.server.requests

    def cloud_metadata(self) -> dict[str, str]:
        """What MLClient(cloud=..., cloud_metadata=...) needs to send everything here."""
        return {
            "azure_portal": f"{self.base}/",
            "resource_manager": f"{self.base}/",
            "active_directory": f"{self.base}/",
            "aml_resource_id": f"{self.base}/",
            "storage_endpoint": f"core.fake.test:{self.server.port}",
            "registry_discovery_endpoint": f"{self.base}/",
        }

    def sent(self, method: str, pattern: str) -> list[Recorded]:
        """Recorded requests with this method whose path matches ``pattern``."""
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def reset(self) -> None:
        server = self.server
        fresh = FakeAzureML(server=server)
        self.__dict__.update(fresh.__dict__)
        if server is not None:
            server.requests.clear()
            server.faults.clear()
        self.seed()

    # -- seed data ---------------------------------------------------------------------
    def seed(self) -> None:
        self.add_registry_model(
            "Phi-3-mini-4k-instruct",
            "7",
            tags={
                "finetune_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC12s_v3', "
                "'Standard_NC24rs_v3']",
                "inference_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC12s_v3']",
                "model_specific_defaults": "{'apply_lora': 'true', 'precision': '16'}",
            },
        )
        self.add_component("chat_completion_pipeline", "0.0.57")
        self.vm_sizes = [
            {
                "name": "Standard_NC6s_v3",
                "family": "standardNCSv3Family",
                "vCPUs": 6,
                "gpus": 1,
                "memoryGB": 112.0,
                "lowPriorityCapable": True,
                "supportedComputeTypes": ["AmlCompute"],
            },
            {
                "name": "Standard_NC12s_v3",
                "family": "standardNCSv3Family",
                "vCPUs": 12,
                "gpus": 2,
                "memoryGB": 224.0,
                "lowPriorityCapable": True,
                "supportedComputeTypes": ["AmlCompute"],
            },
            {
                "name": "Standard_NC24rs_v3",
                "family": "standardNCSv3Family",
                "vCPUs": 24,
                "gpus": 4,
                "memoryGB": 448.0,
                "lowPriorityCapable": True,
                "supportedComputeTypes": ["AmlCompute"],
            },
            {
                "name": "Standard_DS3_v2",
                "family": "standardDSv2Family",
                "vCPUs": 4,
                "gpus": 0,
                "memoryGB": 14.0,
                "lowPriorityCapable": True,
                "supportedComputeTypes": ["AmlCompute"],
            },
        ]

    def add_registry_model(self, name: str, version: str, tags: dict[str, str]) -> None:
        body = example("Registry_ModelVersion_get.json")
        body.update(
            id=f"azureml://registries/{self.registry}/models/{name}/versions/{version}",
            name=version,
            type="Microsoft.MachineLearningServices/registries/models/versions",
        )
        body["properties"].update(
            description=f"{name} base model",
            tags=tags,
            properties={},
            flavors={},
            modelType="mlflow_model",
            modelUri=f"azureml://registries/{self.registry}/models/{name}/versions/{version}",
        )
        self.registry_models.setdefault(name, []).insert(0, body)

    def add_component(
        self, name: str, version: str, inputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A registry component version; its spec (inputs with type, default, optional,
        enum, min) is chat_completion_pipeline 0.0.57's unless ``inputs`` replaces them."""
        component_spec = json.loads(COMPONENT_SPEC.read_text())
        component_spec.update(name=name, version=version)
        if inputs is not None:
            component_spec["inputs"] = inputs
        body = example("Registry_ComponentVersion_get.json")
        body.update(
            id=f"azureml://registries/{self.registry}/components/{name}/versions/{version}",
            name=version,
        )
        body["properties"].update(
            description="chat completion fine-tune pipeline",
            tags={},
            properties={},
            componentSpec=component_spec,
        )
        self.components.setdefault(name, []).insert(0, body)
        return component_spec

    def add_compute(
        self,
        name: str,
        size: str,
        state: str = "Succeeded",
        priority: str = "Dedicated",
        nodes: int = 0,
    ) -> dict[str, Any]:
        """A cluster; ``nodes`` are its current nodes, which the usages answer counts."""
        body = example("Compute_get_AmlCompute.json")
        body.update(id=f"{self.ws_path}/computes/{name}", name=name, location=self.location)
        props = body["properties"]
        props["provisioningState"] = state
        props["properties"].update(
            vmSize=size, vmPriority=priority, osType="Linux", subnet=None,
            currentNodeCount=nodes, targetNodeCount=nodes, allocationState="Steady",
        )
        self.computes[name] = body
        return body

    def add_endpoint(
        self, name: str, tags: dict[str, str], deployments: dict[str, str],
        created_at: str | None = None,
    ) -> None:
        """A provisioned endpoint with ``deployments`` (name -> size, traffic split evenly),
        put straight into the state: tests that count requests seed without HTTP."""
        model = f"{self.ws_path}/models/chatft/versions/1"
        # Shares that add up to 100 (Azure refuses any other sum), set once the deployments
        # exist (Azure refuses traffic to a deployment that does not).
        share, rest = divmod(100, max(len(deployments), 1))
        traffic = {dep: share + (rest if i == 0 else 0) for i, dep in enumerate(deployments)}
        sent = {"location": self.location, "tags": tags,
                "properties": {"authMode": "Key", "description": "seeded", "traffic": {},
                               "properties": {}}}
        self._endpoint(_seed_request("PUT", json.dumps(sent)), name)
        endpoint = self.endpoints[name]
        endpoint["properties"]["provisioningState"] = "Succeeded"
        if created_at:
            endpoint["systemData"]["createdAt"] = created_at
        for dep, size in deployments.items():
            sent = {"location": self.location, "tags": tags,
                    "sku": {"name": "Default", "capacity": 1},
                    "properties": {"endpointComputeType": "Managed", "instanceType": size,
                                   "model": model, "properties": {},
                                   "requestSettings": {"maxConcurrentRequestsPerInstance": 1,
                                                       "requestTimeout": "PT1M30S"}}}
            self._deployment(_seed_request("PUT", json.dumps(sent)), name, dep)
            self.deployments[name][dep]["properties"]["provisioningState"] = "Succeeded"
        endpoint["properties"]["traffic"] = traffic

    def fail_next_operation(self, resource: str, code: str, message: str) -> None:
        """The next create/update of endpoint or deployment ``resource`` is accepted, then
        its long-running operation ends Failed with this error (as Azure reports
        OutOfQuota, ImageBuildFailure, ResourceNotReady, ...)."""
        self.failing_operations[resource] = {"code": code, "message": message}

    def add_metric_point(
        self, endpoint: str, deployment: str, total: float, timestamp: str
    ) -> None:
        self.metric_points.setdefault(endpoint, []).append((timestamp, deployment, total))

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, req: Recorded) -> Response:
        if signin.is_signin(req):
            return signin.answer(req)
        if ".blob." in req.host:
            return self._blob(req)
        if req.path.startswith("/score/"):
            return self._score(req)
        if req.path == "/discovery":
            return Response(
                200, {"api": self.base, "history": self.base, "experimentation": self.base}
            )
        if req.path.startswith("/operations/"):
            return self._operation(req)
        if req.path == "/msi/token":
            return self._managed_identity(req)
        auth = req.headers.get("authorization", "")
        if not re.fullmatch(r"Bearer [\w-]+\.[\w-]+\.[\w-]*", auth):
            return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        for pattern, name in _ROUTES:
            match = re.fullmatch(pattern.format(ws=re.escape(self.ws_path)), req.path)
            if match:
                return getattr(self, name)(req, **match.groupdict())
        return arm_error(404, "NotFound", f"fake has no route for {req.method} {req.path}")

    # -- managed identity (App Service style: IDENTITY_ENDPOINT + IDENTITY_HEADER) --------
    @property
    def identity_endpoint(self) -> str:
        return f"{self.base}/msi/token"

    def _managed_identity(self, req: Recorded) -> Response:
        # The machine has no identity assigned, as on a worker nobody set one up for.
        return Response(400, {"statusCode": 400, "message": "Identity not found",
                              "correlationId": str(uuid.uuid4())})

    # -- workspace, registry -------------------------------------------------------------
    def _workspace(self, req: Recorded) -> Response:
        body = example("Workspace_get.json")
        body.update(id=self.ws_path, name=self.workspace, location=self.location)
        body["properties"].update(
            discoveryUrl=f"{self.base}/discovery",
            mlFlowTrackingUri=f"azureml://localhost:{self.server.port}/mlflow/v1.0"
            f"{self.ws_path.replace('/providers/', '/providers/')}",
            workspaceId=self.workspace_id,
        )
        body["properties"].pop("encryption", None)
        return Response(200, body)

    def _registry_discovery(self, req: Recorded, registry: str) -> Response:
        return Response(
            200,
            {
                "registryName": registry,
                "tenantId": "tenant",
                "primaryRegion": self.location,
                "regions": [self.location],
                "subscriptionId": self.registry_subscription,
                "resourceGroup": self.registry_resource_group,
                "workspaceName": None,
                "primaryRegionResourceProviderUri": f"{self.base}/",
            },
        )

    def _registry_versions(
        self, req: Recorded, kind: str, name: str, version: str | None = None
    ) -> Response:
        store = self.registry_models if kind == "models" else self.components
        versions = store.get(name, [])
        if version is None:
            top = int(req.query.get("$top", len(versions) or 1))
            return Response(200, {"value": versions[:top]})
        found = next((v for v in versions if v["name"] == version), None)
        if found is None:
            return arm_error(404, "NotFound", f"{kind} {name}:{version} not found")
        return Response(200, found)

    # -- compute ---------------------------------------------------------------------------
    def _compute(self, req: Recorded, name: str) -> Response:
        if req.method == "GET":
            if name not in self.computes:
                return arm_error(404, "ResourceNotFound", f"compute {name} not found")
            return Response(200, self.computes[name])
        props = req.json["properties"]["properties"]
        body = self.add_compute(name, props["vmSize"], "Creating", props.get("vmPriority"))
        body["properties"]["properties"]["scaleSettings"] = props.get("scaleSettings")
        return self._async_started(body, f"{self.ws_path}/computes/{name}")

    def _vm_sizes(self, req: Recorded, location: str) -> Response:
        return Response(200, {"value": self.vm_sizes})

    def _usages(self, req: Recorded, location: str) -> Response:
        """Rows shaped on Usage_list.json: subscription-level family rows and regional totals,
        plus the workspace- and compute-scoped copies Azure also returns (a reader that sums
        every row of a family counts it twice)."""
        templates = {row["type"].rsplit("/", 2)[-2]: row for row in _usage_example()}
        sub = f"/subscriptions/{self.subscription}/usages"

        def row(kind: str, row_id: str, name: str, used: int, limit: int) -> dict[str, Any]:
            body = copy.deepcopy(templates[kind])
            body.update(id=row_id, currentValue=used, limit=limit,
                        name={"value": name, "localizedValue": name})
            return body

        rows = [row("totalCores", sub, "Clusters", len(self.computes), 100)]
        for name, (used, limit) in self.quota.items():
            if name == REGIONAL_DEDICATED:
                rows.append(row("dedicatedCores", sub, name, used, limit))
            elif name == REGIONAL_LOW_PRIORITY:
                rows.append(row("lowPriorityCores", sub, name, used, limit))
            else:
                suffix = name.replace(" ", "_")
                rows.append(row("vmFamily", f"{sub}/{suffix}", name, used, limit))
                if used:
                    rows.append(row("workspaces", f"{self.ws_path}/usages/{suffix}",
                                    name, used, limit))
        for cluster, body in self.computes.items():
            props = body["properties"]["properties"]
            size = next((s for s in self.vm_sizes if s["name"] == props["vmSize"]), None)
            if size is None or not props.get("currentNodeCount"):
                continue
            tier = "LowPriority" if "low" in str(props.get("vmPriority")).lower() else "Dedicated"
            name = quota_row(size["family"], tier)
            rows.append(row(
                "computes", f"{self.ws_path}/computes/{cluster}/usages/{name.replace(' ', '_')}",
                name, props["currentNodeCount"] * size["vCPUs"], self.quota.get(name, (0, -1))[1],
            ))
        return Response(200, {"value": rows})

    # -- datastore and blob upload ---------------------------------------------------------
    def _datastore(self, req: Recorded, name: str) -> Response:
        return Response(
            200,
            {
                "id": f"{self.ws_path}/datastores/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                "properties": {
                    "datastoreType": "AzureBlob",
                    "isDefault": True,
                    "accountName": self.storage_account,
                    "containerName": "azureml-blobstore",
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "credentials": {"credentialsType": "AccountKey"},
                },
            },
        )

    def _datastores(self, req: Recorded) -> Response:
        return Response(200, {"value": [self._datastore(req, "workspaceblobstore").body]})

    def _datastore_secrets(self, req: Recorded, name: str) -> Response:
        key = base64.b64encode(b"fake-storage-account-key-0123456789").decode()
        return Response(200, {"secretsType": "AccountKey", "key": key})

    def _blob(self, req: Recorded) -> Response:
        path = req.path
        if req.query.get("comp") == "list":
            prefix = f"{path}/{req.query.get('prefix', '')}".lstrip("/")
            names = [
                n
                for n in self.blobs
                if n.startswith(prefix.split("/", 1)[-1]) and n.startswith(path.strip("/") + "/")
            ]
            items = "".join(
                f"<Blob><Name>{n.split('/', 1)[1]}</Name><Properties>"
                f"<Content-Length>{len(self.blobs[n])}</Content-Length>"
                "<BlobType>BlockBlob</BlobType></Properties></Blob>"
                for n in names
            )
            xml = (
                '<?xml version="1.0" encoding="utf-8"?><EnumerationResults>'
                f"<Blobs>{items}</Blobs><NextMarker /></EnumerationResults>"
            )
            return Response(200, xml.encode(), {"Content-Type": "application/xml"})
        key = path.lstrip("/")
        common = {
            "x-ms-version": "2025-01-05",
            "ETag": '"0x1"',
            "Last-Modified": "Mon, 01 Jan 2026 00:00:00 GMT",
        }
        if req.method == "PUT" and req.query.get("comp") == "metadata":
            self.blob_metadata[key] = {
                k[len("x-ms-meta-") :]: v
                for k, v in req.headers.items()
                if k.startswith("x-ms-meta-")
            }
            return Response(200, None, common)
        if req.method == "PUT":
            self.blobs[key] = req.raw_body
            return Response(201, None, {**common, "x-ms-request-server-encrypted": "true"})
        if key not in self.blobs:
            return Response(404, None, {"x-ms-error-code": "BlobNotFound", **common})
        meta = {f"x-ms-meta-{k}": v for k, v in self.blob_metadata.get(key, {}).items()}
        headers = {
            **common,
            **meta,
            "x-ms-blob-type": "BlockBlob",
            "Content-Length-Hint": str(len(self.blobs[key])),
        }
        return Response(200, self.blobs[key] if req.method == "GET" else b"", headers)

    # -- jobs, run history, MLflow -------------------------------------------------------
    def _job(self, req: Recorded, name: str) -> Response:
        if req.method == "PUT":
            return self._create_job(req, name)
        job = self.jobs.get(name)
        if job is None:
            return arm_error(404, "UserError", f"Job {name} not found")
        job.polls += 1
        self._sync_runs(name)
        return Response(200, self._job_body(job))

    def _job_body(self, job: FakeJob) -> dict[str, Any]:
        body = copy.deepcopy(job.body)
        body["properties"]["status"] = job.status
        return body

    def _create_job(self, req: Recorded, name: str) -> Response:
        if name in self.jobs:
            return arm_error(400, "UserError", f"Job {name} already exists")
        if "x-azureml-token" not in req.headers:
            return arm_error(400, "UserError", "x-azureml-token header missing")
        body = copy.deepcopy(req.json)
        props = body["properties"]
        studio = f"https://ml.azure.com/runs/{name}?wsid={self.ws_path}"
        props.update(
            status="NotStarted",
            services={
                "Studio": {"jobServiceType": "Studio", "endpoint": studio},
                "Tracking": {"jobServiceType": "Tracking", "endpoint": "azureml://x"},
            },
        )
        props["outputs"]["trained_model"]["uri"] = (
            f"azureml://datastores/workspaceblobstore/paths/azureml/{name}/trained_model/"
        )
        body.update(
            id=f"{self.ws_path}/jobs/{name}",
            name=name,
            type="Microsoft.MachineLearningServices/workspaces/jobs",
            systemData={"createdAt": _now(), "createdBy": "fake"},
        )
        progress = self.job_progress.get(name, JOB_PROGRESS)
        self.jobs[name] = FakeJob(body=body, progress=progress)
        experiment = props.get("experimentName") or "Default"
        exp_id = self.experiments.setdefault(experiment, str(len(self.experiments) + 1))
        self._add_run(name, props.get("displayName"), None, exp_id)
        if self.registry_layout:
            node = self._add_run(f"{name}_{REGISTRY_NODE}", REGISTRY_NODE, name, exp_id)
            for step in REGISTRY_STEPS:
                self._add_run(f"{name}_{step}", step, node, exp_id, _registry_metrics(step))
            return Response(201, self._job_body(self.jobs[name]))
        for step in STEPS:
            self._add_run(f"{name}_{step}", step, name, exp_id, _step_metrics(step))
        for sub in self.nested_steps.get(name, ()):
            self._add_run(f"{name}_finetune_{sub}", sub, f"{name}_finetune", exp_id)
        return Response(201, self._job_body(self.jobs[name]))

    def _add_run(self, run_id: str, name: str | None, parent: str | None, experiment_id: str,
                 metrics: dict[str, list[tuple[int, float]]] | None = None) -> str:
        """A run of the job's tree, as run history and MLflow both show it."""
        self.runs[run_id] = {"run_id": run_id, "name": name, "parent": parent,
                             "experiment_id": experiment_id, "status": "NotStarted",
                             "metrics": metrics or {}}
        return run_id

    def _sync_runs(self, name: str) -> None:
        status = self.jobs[name].status
        if self.registry_layout:
            self._sync_registry_runs(name, status)
            return
        plan = {
            "NotStarted": ("NotStarted",) * 4,
            "Running": ("Completed", "Completed", "Running", "NotStarted"),
            "Completed": ("Completed",) * 4,
            "Failed": ("Completed", "Completed", "Failed", "NotStarted"),
        }
        for step, step_status in zip(STEPS, plan.get(status, plan["Running"]), strict=True):
            self.runs[f"{name}_{step}"]["status"] = step_status
        subs = self.nested_steps.get(name, ())
        finetune = self.runs[f"{name}_finetune"]["status"]
        for i, sub in enumerate(subs):
            last = i == len(subs) - 1
            self.runs[f"{name}_finetune_{sub}"]["status"] = (
                finetune if last or finetune in ("NotStarted", "Completed") else "Completed")
        self.runs[name]["status"] = status

    def _sync_registry_runs(self, name: str, status: str) -> None:
        """The node goes as the job goes; its steps run in order, the finetune step is the
        one running (or failing) while the job is."""
        at = REGISTRY_STEPS.index("chat_completion_finetune")
        for i, step in enumerate(REGISTRY_STEPS):
            if status in ("NotStarted", "Completed"):
                step_status = status
            else:
                step_status = "Completed" if i < at else status if i == at else "NotStarted"
            self.runs[f"{name}_{step}"]["status"] = step_status
        self.runs[f"{name}_{REGISTRY_NODE}"]["status"] = status
        self.runs[name]["status"] = status

    def _jobs(self, req: Recorded) -> Response:
        return Response(200, {"value": [self._job_body(j) for j in self.jobs.values()]})

    def _cancel_job(self, req: Recorded, name: str) -> Response:
        if name not in self.jobs:
            return arm_error(404, "UserError", f"Job {name} not found")
        self.jobs[name].progress = ("CancelRequested", "Canceled")
        self.jobs[name].polls = 0
        return Response(
            202, None, {"Location": f"{self.base}/operations/done-{name}", "retry-after-ms": "50"}
        )

    def _children(self, req: Recorded, name: str) -> Response:
        children = [r for r in self.runs.values() if r["parent"] == name]
        return Response(
            200,
            {
                "value": [
                    {
                        "runId": r["run_id"],
                        "status": r["status"],
                        "displayName": r["name"],
                        "parentRunId": name,
                        "rootRunId": name,
                        "runType": "azureml.StepRun",
                        "tags": {},
                        "properties": {},
                        "createdUtc": _now(),
                        "services": {},
                    }
                    for r in children
                ]
            },
        )

    def _run_details(self, req: Recorded, name: str) -> Response:
        """Run history's details of a job or step: the only place a failure's text lives."""
        run = self.runs.get(name)
        if run is None:
            return arm_error(404, "RunNotFound", f"run {name} not found")
        details: dict[str, Any] = {"runId": name, "status": run["status"], "warnings": None,
                                   "logFiles": {}, "services": {}}
        if run["status"] == "Failed":
            root = name
            while self.runs[root]["parent"]:
                root = self.runs[root]["parent"]
            has_steps = any(r["parent"] == name for r in self.runs.values())
            if run["parent"] and not has_steps:
                error = self.job_errors.get(root) or {
                    "code": "SystemError", "message": f"step {run['name']} failed"}
            else:
                failed = [r["name"] for r in self.runs.values()
                          if r["parent"] == name and r["status"] == "Failed"]
                error = {
                    "code": "UserError",
                    "message": "Pipeline has failed child jobs. Failed nodes: "
                    f"{', '.join('/' + f for f in failed)}. For more details and logs, please "
                    "go to the job detail page and check the child jobs.",
                }
            details["error"] = {"error": {**error, "severity": None}, "time": _now()}
        return Response(200, details)

    def _mlflow(self, req: Recorded, call: str) -> Response:
        return mlflow_api.answer(req, call, self.experiments, self.runs, self.mlflow_max_page)

    # -- models ------------------------------------------------------------------------
    def _model_versions(self, req: Recorded, name: str) -> Response:
        versions = sorted(
            self.models.get(name, {}).values(),
            key=lambda b: b["systemData"]["createdAt"],
            reverse=True,
        )
        top = int(req.query.get("$top", len(versions) or 1))
        return Response(200, {"value": versions[:top]})

    def _model_version(self, req: Recorded, name: str, version: str) -> Response:
        if req.method == "PUT":
            refusal = self._unfinished_job_output(req.json["properties"].get("modelUri", ""))
            if refusal:
                return arm_error(400, "UserError", refusal)
            body = example("ModelVersion_createOrUpdate.json")
            body.update(
                id=f"{self.ws_path}/models/{name}/versions/{version}",
                name=version,
                systemData={"createdAt": _now(), "createdBy": "fake"},
            )
            body["properties"] = {**req.json["properties"], "flavors": {}}
            status = 200 if version in self.models.get(name, {}) else 201
            self.models.setdefault(name, {})[version] = body
            return Response(status, body)
        found = self.models.get(name, {}).get(version)
        if found is None:
            return arm_error(404, "ResourceNotFound", f"model {name}:{version} not found")
        return Response(200, found)

    def _unfinished_job_output(self, uri: str) -> str | None:
        # A job's outputs exist only once it Completed; the fake knows only its own jobs.
        match = re.match(r"azureml://jobs/([^/]+)/outputs/", uri)
        job = self.jobs.get(match.group(1)) if match else None
        if job is None or job.status == "Completed":
            return None
        return f"Output of job {job.body['name']} is not available: the job is {job.status}."

    # -- endpoints and deployments -----------------------------------------------------
    def _endpoints(self, req: Recorded) -> Response:
        return Response(200, {"value": list(self.endpoints.values())})

    def _traffic_refusal(self, name: str, properties: dict[str, Any]) -> Response | None:
        """What Azure refuses in an endpoint's traffic (documented for safe rollout): live
        traffic that names a missing deployment or does not add up to 100, mirrored traffic
        to more than one deployment, over 50 %, or to a deployment that takes live traffic.
        The codes and wording are the fake's own; the refusal (a 400) is Azure's."""
        existing = set(self.deployments.get(name, {}))
        live = {k: v for k, v in (properties.get("traffic") or {}).items() if v}
        mirror = {k: v for k, v in (properties.get("mirrorTraffic") or {}).items() if v}
        unknown = sorted((set(live) | set(mirror)) - existing)
        if unknown:
            return arm_error(400, "BadArgument",
                             f"traffic names deployments that do not exist: {', '.join(unknown)}")
        if live and sum(live.values()) != 100:
            return arm_error(400, "BadArgument",
                             f"live traffic must add up to 100, not {sum(live.values())}")
        if len(mirror) > 1:
            return arm_error(400, "BadArgument", "traffic can be mirrored to one deployment only")
        if any(v > 50 for v in mirror.values()):
            return arm_error(400, "BadArgument", "mirrored traffic is at most 50 percent")
        if set(mirror) & set(live):
            return arm_error(400, "BadArgument",
                             "a deployment cannot take live and mirrored traffic at once")
        return None

    def _endpoint(self, req: Recorded, name: str) -> Response:
        if req.method == "PUT":
            body = example("OnlineEndpoint_get.json")
            sent = req.json
            refusal = self._traffic_refusal(name, sent.get("properties") or {})
            if refusal is not None:
                return refusal
            body.update(
                id=f"{self.ws_path}/onlineEndpoints/{name}",
                name=name,
                location=self.location,
                tags=sent.get("tags") or {},
                identity={"type": "SystemAssigned"},
                type="Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            )
            body.pop("sku", None)
            body["properties"] = {
                **sent["properties"],
                "scoringUri": f"{self.base}/score/{name}",
                "swaggerUri": f"{self.base}/swagger/{name}",
                "provisioningState": "Updating" if name in self.endpoints else "Creating",
            }
            if name in self.endpoints:
                body["systemData"] = self.endpoints[name]["systemData"]
            else:
                body["systemData"]["createdAt"] = _now()
            self.endpoints[name] = body
            self.keys.setdefault(
                name,
                {"primaryKey": f"pk-{uuid.uuid4().hex}", "secondaryKey": f"sk-{uuid.uuid4().hex}"},
            )
            return self._async_started(body, f"{self.ws_path}/onlineEndpoints/{name}")
        if name not in self.endpoints:
            return arm_error(404, "ResourceNotFound", f"endpoint {name} not found")
        if req.method == "DELETE":
            del self.endpoints[name]
            self.deployments.pop(name, None)
            return self._delete_started(name)
        return Response(200, self.endpoints[name])

    def _list_keys(self, req: Recorded, name: str) -> Response:
        if name not in self.endpoints:
            return arm_error(404, "ResourceNotFound", f"endpoint {name} not found")
        return Response(200, self.keys[name])

    def _deployments(self, req: Recorded, endpoint: str) -> Response:
        if endpoint not in self.endpoints:
            return arm_error(404, "ResourceNotFound", f"endpoint {endpoint} not found")
        return Response(200, {"value": list(self.deployments.get(endpoint, {}).values())})

    def _deployment(self, req: Recorded, endpoint: str, name: str) -> Response:
        if endpoint not in self.endpoints:
            return arm_error(404, "ResourceNotFound", f"endpoint {endpoint} not found")
        store = self.deployments.setdefault(endpoint, {})
        if req.method == "PUT":
            sent = req.json
            body = example("OnlineDeployment_ManagedOnlineDeployment_get.json")
            body.update(
                id=f"{self.ws_path}/onlineEndpoints/{endpoint}/deployments/{name}",
                name=name,
                location=self.location,
                tags=sent.get("tags") or {},
                sku=sent.get("sku"),
                identity=None,
            )
            body["properties"] = {
                **sent["properties"],
                "provisioningState": "Creating",
                "scaleSettings": {"scaleType": "Default"},
            }
            store[name] = body
            return self._async_started(
                body, f"{self.ws_path}/onlineEndpoints/{endpoint}/deployments/{name}"
            )
        if name not in store:
            return arm_error(404, "ResourceNotFound", f"deployment {name} not found")
        if req.method == "DELETE":
            share = self.endpoints[endpoint]["properties"].get("traffic", {}).get(name, 0)
            if share:
                return arm_error(400, "BadArgument", f"deployment {name} takes {share}% of the "
                                 "live traffic; route it elsewhere before deleting it")
            mirrored = self.endpoints[endpoint]["properties"].get("mirrorTraffic") or {}
            mirrored.pop(name, None)
            del store[name]
            return self._delete_started(name)
        return Response(200, store[name])

    def _deployment_logs(self, req: Recorded, endpoint: str, name: str) -> Response:
        lines = self.deployment_logs.splitlines()[-int(req.json.get("tail", 50)) :]
        return Response(200, {"content": "\n".join(lines)})

    def _score(self, req: Recorded) -> Response:
        name = req.path.rsplit("/", 1)[-1]
        with self._score_lock:
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
            self.scoring_peak = max(self.scoring_peak, sum(self._in_flight.values()))
            self.scoring_peak_per_endpoint[name] = max(
                self.scoring_peak_per_endpoint.get(name, 0), self._in_flight[name])
        try:
            time.sleep(self.score_delay_s)
            return self._score_answer(req, name)
        finally:
            with self._score_lock:
                self._in_flight[name] -= 1

    def _score_answer(self, req: Recorded, name: str) -> Response:
        self.scoring_requests.append(req)
        keys = self.keys.get(name, {})
        auth = req.headers.get("authorization", "")
        if name not in self.endpoints or auth.removeprefix("Bearer ") not in keys.values():
            return Response(401, {"error": {"message": "Invalid authentication"}})
        deployment = req.headers.get("azureml-model-deployment")
        if deployment and deployment not in self.deployments.get(name, {}):
            return Response(404, {"error": {"message": f"no deployment {deployment}"}})
        return Response(
            200,
            {"output": "Sure! Here is a short answer."},
            {"azureml-model-deployment": deployment or "demo"},
        )

    # -- long-running operations ---------------------------------------------------------
    def _async_started(self, body: dict[str, Any], resource_path: str) -> Response:
        op = f"op{next(self._ids)}"
        self._operations[op] = resource_path
        error = self.failing_operations.pop(resource_path.rsplit("/", 1)[-1], None)
        if error is not None:
            self._operation_errors[op] = error
        return Response(
            201,
            body,
            {
                "Azure-AsyncOperation": f"{self.base}/operations/{op}",
                "retry-after-ms": "50",
            },
        )

    def _delete_started(self, name: str) -> Response:
        self._delete_polls_left[name] = self.delete_polls
        return Response(
            202, None, {"Location": f"{self.base}/operations/done-{name}", "retry-after-ms": "50"}
        )

    def _operation(self, req: Recorded) -> Response:
        op = req.path.rsplit("/", 1)[-1]
        if op.startswith("done-"):
            name = op.removeprefix("done-")
            if self._delete_polls_left.get(name, 0) > 0:
                self._delete_polls_left[name] -= 1
                return Response(202, None, {"Location": f"{self.base}/operations/{op}",
                                            "Retry-After": self.delete_retry_after_s})
            return Response(200, None)
        path = self._operations.get(op, "")
        resource = self._find_resource(path)
        error = self._operation_errors.get(op)
        if resource is not None:
            resource["properties"]["provisioningState"] = "Failed" if error else "Succeeded"
        if error:
            return Response(200, {"status": "Failed", "name": op, "error": error})
        return Response(200, {"status": "Succeeded", "name": op})

    def _find_resource(self, path: str) -> dict[str, Any] | None:
        parts = path.rsplit("/", 4)
        if "/deployments/" in path:
            return self.deployments.get(parts[-3], {}).get(parts[-1])
        if "/onlineEndpoints/" in path:
            return self.endpoints.get(parts[-1])
        if "/computes/" in path:
            return self.computes.get(parts[-1])
        return None

    # -- Azure Monitor -------------------------------------------------------------------
    def _metrics_batch(self, req: Recorded, subscription: str) -> Response:
        values = []
        for resource_id in req.json["resourceids"]:
            endpoint = resource_id.rstrip("/").rsplit("/", 1)[-1]
            by_deployment: dict[str, list[dict[str, Any]]] = {}
            for ts, dep, total in self.metric_points.get(endpoint, []):
                by_deployment.setdefault(dep, []).append({"timeStamp": ts, "total": total})
            values.append(
                {
                    "starttime": req.query.get("starttime"),
                    "endtime": req.query.get("endtime"),
                    "interval": req.query.get("interval", "PT1M"),
                    "namespace": req.query.get("metricnamespace"),
                    "resourceregion": self.location,
                    "resourceid": resource_id,
                    "value": [
                        {
                            "id": f"{resource_id}/providers/Microsoft.Insights/metrics/{METRIC}",
                            "type": "Microsoft.Insights/metrics",
                            "name": {
                                "value": "RequestsPerMinute",
                                "localizedValue": "Requests Per Minute",
                            },
                            "unit": "Count",
                            "displayDescription": "Requests per minute",
                            "errorCode": "Success",
                            "timeseries": [
                                {
                                    "metadatavalues": [
                                        {"name": {"value": "deployment"}, "value": dep}
                                    ],
                                    "data": data,
                                }
                                for dep, data in by_deployment.items()
                            ],
                        }
                    ],
                }
            )
        return Response(200, {"values": values})


def _seed_request(method: str, body: str) -> Recorded:
    return Recorded(method=method, host="seed", path="", query={}, headers={},
                    raw_body=body.encode())
def _usage_example() -> list[dict[str, Any]]:
    return example("Usage_list.json")["value"]


def _registry_metrics(step: str) -> dict[str, list[tuple[int, float]]]:
    """What HF Trainer logs through MLflow in the finetune step: per logging step loss,
    grad_norm, learning_rate and epoch; per evaluation (each epoch) eval_*; at the end the
    train_* summaries. Two epochs of three steps."""
    if step != "chat_completion_finetune":
        return {}
    steps = range(1, 7)
    metrics: dict[str, list[tuple[int, float]]] = {
        "loss": [(s, round(2.0 - 0.15 * s, 3)) for s in steps],
        "grad_norm": [(s, round(1.5 - 0.1 * s, 3)) for s in steps],
        "learning_rate": [(s, 2e-5 * (1 - s / 6)) for s in steps],
        "epoch": [(s, round(s / 3, 3)) for s in steps],
        "eval_loss": [(3, 1.45), (6, 1.3)],
        "eval_runtime": [(3, 12.1), (6, 11.9)],
        "eval_samples_per_second": [(3, 8.3), (6, 8.4)],
        "eval_steps_per_second": [(3, 1.0), (6, 1.1)],
    }
    for key, value in (("train_runtime", 301.5), ("train_samples_per_second", 1.9),
                       ("train_steps_per_second", 0.02), ("total_flos", 1.2e15),
                       ("train_loss", 1.52)):
        metrics[key] = [(6, value)]
    return metrics


def _step_metrics(step: str) -> dict[str, list[tuple[int, float]]]:
    if step == "finetune":
        return {"train_loss": [(1, 1.9), (2, 1.4), (3, 1.1)], "eval_loss": [(3, 1.3)]}
    if step == "model_evaluation":
        return {"perplexity": [(0, 3.7)], "bleu_score": [(0, 0.21)]}
    return {}


_ROUTES: list[tuple[str, str]] = [
    (r"{ws}", "_workspace"),
    (r"/registrymanagement/v1\.0/registries/(?P<registry>[^/]+)/discovery", "_registry_discovery"),
    (
        r"/mferp/managementfrontend/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
        r"Microsoft\.MachineLearningServices/registries/[^/]+/(?P<kind>models|components)/"
        r"(?P<name>[^/]+)/versions(?:/(?P<version>[^/]+))?",
        "_registry_versions",
    ),
    (r"{ws}/computes/(?P<name>[^/]+)", "_compute"),
    (
        r"/subscriptions/[^/]+/providers/Microsoft\.MachineLearningServices/locations/"
        r"(?P<location>[^/]+)/vmSizes",
        "_vm_sizes",
    ),
    (
        r"/subscriptions/[^/]+/providers/Microsoft\.MachineLearningServices/locations/"
        r"(?P<location>[^/]+)/usages",
        "_usages",
    ),
    (r"{ws}/datastores", "_datastores"),
    (r"{ws}/datastores/(?P<name>[^/]+)", "_datastore"),
    (r"{ws}/datastores/(?P<name>[^/]+)/listSecrets", "_datastore_secrets"),
    (r"{ws}/jobs", "_jobs"),
    (r"{ws}/jobs/(?P<name>[^/]+)", "_job"),
    (r"{ws}/jobs/(?P<name>[^/]+)/cancel", "_cancel_job"),
    (r"/history/v1\.0{ws}/runs/(?P<name>[^/]+)/children", "_children"),
    (r"/history/v1\.0{ws}/runs/(?P<name>[^/]+)/details", "_run_details"),
    (r"/mlflow/v1\.0{ws}/api/2\.0/mlflow/(?P<call>.+)", "_mlflow"),
    (r"{ws}/models/(?P<name>[^/]+)/versions", "_model_versions"),
    (r"{ws}/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", "_model_version"),
    (r"{ws}/onlineEndpoints", "_endpoints"),
    (r"{ws}/onlineEndpoints/(?P<name>[^/]+)", "_endpoint"),
    (r"{ws}/onlineEndpoints/(?P<name>[^/]+)/listKeys", "_list_keys"),
    (r"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)/deployments", "_deployments"),
    (r"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)", "_deployment"),
    (
        r"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)/getLogs",
        "_deployment_logs",
    ),
    (r"/subscriptions/(?P<subscription>[^/]+)/metrics:getBatch", "_metrics_batch"),
]
