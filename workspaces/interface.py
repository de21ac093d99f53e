"""The workspace interface every step of the procedure goes through, and the records it returns.

A workspace is where the work happens: Azure Machine Learning, or the embedded local
workspace on this machine. Both implement :class:`Workspace`; the records below are plain
pydantic models so Prefect can persist them as task results and show them in artifacts.

Long operations are split into ``begin_*`` calls that return at once and ``get_*`` calls
that report state, so the tasks own the waiting (back-off, progress, deadline) the same way
on both workspaces.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from workspaces.release_history import ReleaseEvent

JobStatus = Literal[
    "NotStarted",
    "Queued",
    "Preparing",
    "Provisioning",
    "Starting",
    "Running",
    "Finalizing",
    "CancelRequested",
    "Completed",
    "Failed",
    "Canceled",
    "NotResponding",
    "Paused",
    "Unknown",
]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset(
    {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}
)

ProvisioningState = Literal[
    "Creating", "Updating", "Scaling", "Deleting", "Succeeded", "Failed", "Canceled", "Unknown"
]

# Tag keys on every resource the project creates; the scheduled flows select on them.
TAG_MANAGED_BY = "managed-by"
MANAGED_BY_VALUE = "chat-finetune-flows"
TAG_FLOW_RUN = "prefect-flow-run"
TAG_REQUEST = "chatft-request"
TAG_SUFFIX = "chatft-suffix"
TAG_MODEL = "chatft-model"
TAG_MODEL_VERSION = "chatft-model-version"
TAG_PROTECTED = "chatft-protected"
TAG_NO_SMOKE_TEST = "chatft-no-smoke-test"
# Lineage: the job carries these from its submission (what it was given to train on), and
# the registered model copies them from the job, never from a later request.
TAG_DATASET = "dataset"
SPLIT_SHA256_TAGS = {
    "train_sft": "train-sha256", "test_sft": "test-sha256", "test_gen": "test-gen-sha256"
}
TAG_MAX_SEQ_LENGTH = "max-seq-length"
LINEAGE_TAGS = (TAG_DATASET, "dataset-split-pc", *SPLIT_SHA256_TAGS.values(),
                TAG_MAX_SEQ_LENGTH)


def managed_tags(
    request_id: str, flow_run: str, model: str | None = None, version: str | None = None
) -> dict[str, str]:
    """The tags of a resource this project makes for ``request_id`` in ``flow_run``.

    Who manages it (what the scheduled flows select on), the run that made it, the request
    that owns it, and, when given, the model and version it holds or serves.
    """
    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_RUN: flow_run, TAG_REQUEST: request_id}
    if model is not None:
        tags[TAG_MODEL] = model
    if version is not None:
        tags[TAG_MODEL_VERSION] = version
    return tags

# A release onto a live endpoint (flows/rollout.py) keeps its state on the endpoint itself,
# so a re-run or the scheduled smoke test can finish or undo what a killed run left.
TAG_ROLLOUT_REQUEST = "chatft-rollout-request"
TAG_ROLLOUT_STEP = "chatft-rollout-step"
TAG_ROLLOUT_FROM = "chatft-rollout-from"
TAG_ROLLOUT_TO = "chatft-rollout-to"
TAG_ROLLOUT_SINCE = "chatft-rollout-since"
TAG_ROLLOUT_KEEP_PREVIOUS = "chatft-rollout-keep-previous"
# The flow run that moves the release: the recovery settles a release only once that run
# is over (workspaces/release_state.py holds the steps and their moves).
TAG_ROLLOUT_RUN = "chatft-rollout-run"
TAG_ROLLOUT_REASON = "chatft-rollout-reason"
# Written with ``promoted`` and ``rolled-back``: the history's word for the end the release
# is heading to (promoted, rolled-back, aborted, canary-failed), so whoever finishes it
# (the run, its re-run, the recovery) records the same end with the same reason.
TAG_ROLLOUT_ENDING = "chatft-rollout-ending"
# "true" when the release's to-deployment existed before it (a rollback at once onto a
# kept deployment): undoing the release never deletes it.
TAG_ROLLOUT_REUSED = "chatft-rollout-reused"
# The stage of a registered version: MLflow aliases locally, the tag on both workspaces.
TAG_STAGE = "chatft-stage"
ModelStage = Literal["production", "candidate", "rejected", "retired"]

# Header the project's own scoring requests carry, so activity can tell them from real use.
CALLER_HEADER = "x-chatft-caller"


class FoundationModel(BaseModel):
    """A base model from the catalog (Azure: the ``azureml`` registry)."""

    name: str
    version: str
    id: str = Field(description="Asset id, the pipeline's mlflow_model_path input")
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class VmSize(BaseModel):
    """A machine size the workspace offers."""

    name: str
    gpus: int = 0
    vcpus: int | None = None
    memory_gb: float | None = None
    family: str | None = Field(default=None, description="Quota family, e.g. standardNCSv3Family")


class ComputeTarget(BaseModel):
    """A training cluster (Azure AmlCompute) or the local machine."""

    name: str
    size: str
    tier: str = "Dedicated"
    provisioning_state: str
    created: bool = Field(default=False, description="True when this call created it")
    max_instances: int = 1


class QuotaCheck(BaseModel):
    """What the workspace's quota allows for the fine-tune cluster, tier by tier."""

    tiers: list[str] = Field(
        description="Tiers with room, in the order to try (Dedicated, then LowPriority)"
    )
    notes: list[str] = Field(
        default_factory=list, description="One sentence per tier considered, with the figures"
    )
    refusal: str | None = Field(
        default=None, description="Why no tier could run the job, with what to do; else None"
    )


class FinetuneJobSpec(BaseModel):
    """Everything needed to submit the fine-tune job (the chat_completion_pipeline call)."""

    name: str = Field(description="Deterministic job name, so a re-run finds it")
    display_name: str
    experiment_name: str
    foundation_model: FoundationModel
    compute: str
    train_file: str = Field(description="Local path of train_sft.jsonl")
    test_file: str = Field(description="Local path of test_sft.jsonl")
    test_gen_file: str | None = Field(
        default=None,
        description="Local path of test_gen.jsonl: held-out questions whose exact-answer rate "
        "the job measures before and after tuning (local workspace; Azure ignores it)",
    )
    gpus_per_node: int
    num_nodes: int = 1
    parameters: dict[str, str] = Field(
        description="Fine-tune inputs by the component's names, values as the API takes them"
    )
    component_version: str | None = Field(
        default=None, description="Pinned chat_completion_pipeline version; None means latest"
    )
    tags: dict[str, str] = Field(default_factory=dict)


class PipelineInput(BaseModel):
    """One input of the fine-tune pipeline as its component declares it.

    Same shape on both workspaces: Azure reads it from the registry's component version,
    the local workspace declares its own.
    """

    type: str = Field(description="string, integer, number, boolean, or an asset type "
                      "(uri_file, mlflow_model, ...)")
    optional: bool = True
    default: str | None = None
    enum: list[str] | None = None
    min: float | None = None
    max: float | None = None
    ignored: str | None = Field(
        default=None,
        description="Why this workspace takes the input but does not use it (local: "
        "DeepSpeed on a CPU); None when it is used",
    )


class PipelineInterface(BaseModel):
    """The inputs of a resolved version of the fine-tune pipeline component."""

    component: str
    version: str
    inputs: dict[str, PipelineInput]
    mirrors: str | None = Field(
        default=None,
        description="Local only: the Azure component version whose interface it keeps",
    )

    @property
    def label(self) -> str:
        """How messages name it, e.g. ``chat_completion_pipeline 0.0.57``."""
        name = f"{self.component} {self.version}"
        return f"{name} (interface of {self.mirrors})" if self.mirrors else name


class FinetuneJob(BaseModel):
    """State of a submitted fine-tune job."""

    name: str
    status: str
    display_name: str = ""
    experiment_name: str = ""
    studio_url: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    component_version: str | None = None
    current_step: str | None = Field(default=None, description="Running child step, if known")
    activity: str | None = Field(
        default=None, description="What the running step does now, when the workspace says "
        "(local jobs: 'held-out questions 17-32 of 50'); Azure jobs do not")
    progress: float | None = Field(default=None, description="0..1 when the workspace knows it")
    training: dict[str, float] = Field(
        default_factory=dict,
        description="Latest training log (step, max_steps, epoch, loss) when the workspace "
        "reports it while the job runs",
    )
    error: str | None = None
    created_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended (Completed, Failed, Canceled, NotResponding)."""
        return self.status in TERMINAL_JOB_STATUSES


class JobMetrics(BaseModel):
    """Metrics of the finetune and evaluation child runs."""

    finetune: dict[str, float] = Field(default_factory=dict)
    evaluation: dict[str, float] = Field(default_factory=dict)
    finetune_history: list[dict[str, Any]] = Field(
        default_factory=list, description="Per-step rows: step, metric, value"
    )
    samples: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Held-out questions with the reference, the base and the tuned model's "
        "replies (messages, reference, base_reply, tuned_reply), when the job records them",
    )
    unavailable: str | None = Field(
        default=None,
        description="Why the metrics could not be read (they are a report, not a gate)",
    )


class RegisteredModel(BaseModel):
    """A model version in the workspace registry."""

    name: str
    version: str
    id: str = Field(description="Versioned id a deployment refers to")
    description: str = ""
    path: str = Field(description="Where the weights came from (the job's trained_model)")
    tags: dict[str, str] = Field(default_factory=dict)
    url: str | None = None


class EndpointSpec(BaseModel):
    """A key-auth online endpoint to create, and the request it is made for."""

    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    owner: str | None = Field(
        default=None,
        description="The request id the write is made for: an endpoint of another request "
        "is refused at the write (None: no owner is stated, as in operator tools)",
    )
    take_over: bool = Field(
        default=False, description="Tag another request's endpoint as ``owner``'s instead"
    )


class DeploymentSpec(BaseModel):
    """A deployment to create behind an endpoint (step 7 of docs/procedure.md)."""

    endpoint_name: str
    name: str
    model_id: str = Field(description="The registered model version's id")
    instance_type: str
    instance_count: int = 1
    tags: dict[str, str] = Field(default_factory=dict)
    liveness_initial_delay_s: int = 600
    request_timeout_ms: int = 90000
    owner: str | None = Field(
        default=None, description="The request id the endpoint must belong to at the write"
    )


class Deployment(BaseModel):
    """A deployment behind an endpoint."""

    name: str
    endpoint_name: str
    model_id: str
    instance_type: str
    instance_count: int
    provisioning_state: str
    error: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class Endpoint(BaseModel):
    """An online endpoint."""

    name: str
    scoring_uri: str | None
    auth_mode: str = "key"
    provisioning_state: str
    description: str = ""
    traffic: dict[str, int] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    healthy: bool | None = Field(
        default=None, description="Local only: whether the serving process answers"
    )
    url: str | None = Field(default=None, description="Human link (Azure ML studio or local URL)")
    deployments: list[Deployment] = Field(default_factory=list)
    error: str | None = Field(
        default=None, description="The service's error (code: message) when provisioning failed"
    )

    @property
    def managed(self) -> bool:
        """Whether this project made the endpoint (its managed-by tag)."""
        return self.tags.get(TAG_MANAGED_BY) == MANAGED_BY_VALUE

    def tags_of(self, deployment_name: str | None) -> dict[str, str]:
        """A deployment's tags over the endpoint's: a deployment made without model tags
        serves the model the endpoint was tagged with."""
        deployment = next((d for d in self.deployments if d.name == deployment_name), None)
        return {**self.tags, **(deployment.tags if deployment is not None else {})}


class EndpointKeys(BaseModel):
    """Key-auth secrets of an endpoint; never logged or returned from a task."""

    primary: SecretStr
    secondary: SecretStr


class ScoreResponse(BaseModel):
    """The raw answer of a scoring request."""

    status_code: int
    body: str
    latency_ms: float
    headers: dict[str, str] = Field(default_factory=dict)


class EndpointActivity(BaseModel):
    """Requests an endpoint served in a time window, split by who sent them.

    ``available`` is False when the workspace could not read the activity; callers must
    then treat the endpoint as unknown, never as idle.
    """

    endpoint_name: str
    start: datetime
    end: datetime
    available: bool = True
    reason: str | None = None
    callers_known: bool = Field(
        default=True,
        description="False when the workspace cannot see the caller marker (Azure Monitor): "
        "requests are then 'unattributed' until the project's own recorded requests are "
        "subtracted (tasks.own_traffic)",
    )
    total_requests: int = 0
    requests_by_caller: dict[str, int] = Field(default_factory=dict)
    requests_by_deployment: dict[str, int] = Field(default_factory=dict)
    errors_by_deployment: dict[str, int] = Field(
        default_factory=dict,
        description="Requests each deployment answered with a server error (5xx, 408, 424), "
        "when the workspace can tell",
    )
    latency_ms_by_deployment: dict[str, float] = Field(
        default_factory=dict,
        description="Median latency of each deployment's answered requests, when known",
    )
    last_request_at: datetime | None = None
    last_organic_request_at: datetime | None = None

    @classmethod
    def unreadable(
        cls, endpoint_name: str, start: datetime, end: datetime, reason: str
    ) -> EndpointActivity:
        """Activity that could not be read: the endpoint must be kept, never taken for idle."""
        return cls(endpoint_name=endpoint_name, start=start, end=end, available=False,
                   reason=reason)

    @property
    def organic_requests(self) -> int:
        """Requests that did not come from this project's own flows.

        Unattributed requests count as organic: an endpoint is never taken for idle
        because the workspace could not tell who called it.
        """
        return self.requests_by_caller.get("organic", 0) + self.requests_by_caller.get(
            "unattributed", 0
        )


class Workspace(ABC):
    """One interface over every step of the procedure.

    Implementations map their own failures onto :mod:`workspaces.errors` so tasks can
    retry transient faults and fail at once on everything else.
    """

    kind: str
    default_foundation_model: str
    default_dataset: str
    default_compute_name: str
    default_compute_size: str
    default_instance_type: str
    requires_gpu: bool
    # The longest pause between two reads of a job, endpoint or deployment being waited
    # for. A management API is polled with a growing back-off up to this; a workspace whose
    # reads are local file reads can afford to look several times a second, which keeps a
    # finished step from waiting up to a minute (or, at 1 s, half a second on average per
    # wait) to be noticed.
    max_poll_interval_s: float = 60.0

    @property
    @abstractmethod
    def cache_scope(self) -> str:
        """A stable, secret-free string naming this workspace, used in cache keys."""

    # -- pre-flight --------------------------------------------------------------------
    @abstractmethod
    def check_access(self) -> str:
        """Verify the credential and that the workspace is reachable; return a summary."""

    # -- foundation model ----------------------------------------------------------------
    @abstractmethod
    def get_foundation_model(self, name: str, label: str = "latest") -> FoundationModel:
        """Look a base model up by name and label (or version) in the model catalog."""

    def prepare_foundation_model(
        self, model: FoundationModel, log: Callable[[str], None]
    ) -> str:
        """Make the model's weights ready for training; return where they are.

        A registry model (Azure) needs nothing. A catalog entry the workspace builds or
        converts itself (local) is made here once, telling ``log`` how it goes.
        """
        return model.id

    # -- compute -------------------------------------------------------------------------
    @abstractmethod
    def get_compute(self, name: str) -> ComputeTarget | None:
        """Return the compute by name, or None when it does not exist."""

    @abstractmethod
    def create_compute(self, name: str, size: str, tier: str, max_instances: int) -> ComputeTarget:
        """Create a compute target of this size and tier, waiting until it exists."""

    @abstractmethod
    def list_vm_sizes(self) -> list[VmSize]:
        """Sizes the workspace offers, with their GPU counts."""

    def compute_quota(
        self, size: str, nodes: int, existing: ComputeTarget | None = None
    ) -> QuotaCheck:
        """Which tiers have quota for ``nodes`` nodes of ``size``.

        ``existing`` is the cluster the job will use when it exists already: it keeps its
        tier, and its own nodes are not counted against it. A workspace that cannot tell
        allows every tier (nothing is refused).
        """
        return QuotaCheck(tiers=["Dedicated", "LowPriority"])

    def deployment_size_problem(self, instance_type: str, instance_count: int) -> str | None:
        """Why ``instance_count`` x ``instance_type`` cannot be served here, told before any
        training; None when it can, or when only the service can tell."""
        return None

    def serving_quota_problem(self, instance_type: str, instance_count: int) -> str | None:
        """Why a deployment of ``instance_count`` x ``instance_type`` cannot be added now,
        beside what already serves (quota left, upgrade reserve included); None when it can,
        or when the workspace cannot tell."""
        return None

    # -- fine-tune jobs ------------------------------------------------------------------
    @abstractmethod
    def get_pipeline_interface(self, version: str | None = None) -> PipelineInterface:
        """The inputs of the fine-tune pipeline component, pinned ``version`` or latest.

        The pre-flight checks every input a request would send against it, before
        anything is created.
        """

    @abstractmethod
    def find_jobs(self, request_id: str) -> list[FinetuneJob]:
        """Jobs this project submitted for a request (by tag), newest first."""

    @abstractmethod
    def get_job(self, name: str) -> FinetuneJob | None:
        """Return the job, or None when no job has this name."""

    @abstractmethod
    def submit_finetune_job(self, spec: FinetuneJobSpec) -> FinetuneJob:
        """Submit the fine-tune job; it runs detached from the caller."""

    @abstractmethod
    def cancel_job(self, name: str) -> None:
        """Ask a running job to stop."""

    @abstractmethod
    def get_job_metrics(self, name: str) -> JobMetrics:
        """Training and evaluation metrics of a job's child runs."""

    # -- registry ------------------------------------------------------------------------
    @abstractmethod
    def get_model(self, name: str, version: str) -> RegisteredModel | None:
        """Return a registered model version, or None."""

    @abstractmethod
    def register_model(
        self,
        name: str,
        version: str,
        job_name: str,
        description: str,
        tags: dict[str, str],
        owner: str | None = None,
    ) -> RegisteredModel:
        """Register the job's trained_model output as an MLflow model version.

        With ``owner`` (a request id), a version that already exists is returned only when
        it carries that request's tag; another request's raises ``OwnershipConflict``.
        """

    # -- endpoints -----------------------------------------------------------------------
    @abstractmethod
    def get_endpoint(self, name: str) -> Endpoint | None:
        """Return an endpoint with its deployments, or None."""

    @abstractmethod
    def list_endpoints(self) -> list[Endpoint]:
        """Every online endpoint in the workspace (callers filter on managed tags).

        An endpoint this project did not make may come without its deployments (reading
        them costs a request each on Azure); a caller that needs them reads that endpoint
        with :meth:`get_endpoint`.
        """

    @abstractmethod
    def begin_create_endpoint(self, spec: EndpointSpec) -> None:
        """Start creating a key-auth endpoint; poll :meth:`get_endpoint` for the outcome.

        With ``spec.owner`` (a request id), an existing endpoint of another request is
        refused (``OwnershipConflict``) at the moment of the write, or, with
        ``spec.take_over``, tagged as this request's; its deployments and traffic are left
        as they are.
        """

    @abstractmethod
    def get_deployment(self, endpoint_name: str, name: str) -> Deployment | None:
        """Return a deployment, or None."""

    @abstractmethod
    def begin_create_deployment(self, spec: DeploymentSpec) -> None:
        """Start creating a deployment; poll :meth:`get_deployment` for the outcome.

        With ``spec.owner``, the endpoint must belong to that request when the write is made.
        """

    @abstractmethod
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
        """Route traffic percentages to deployments and update the endpoint, in one write.

        ``traffic`` None keeps the live shares; ``mirror`` (Azure only) sets the mirrored
        shares ({} clears them, None keeps them); ``tags`` are set on the endpoint in the
        same write (an empty value removes the tag), so a rollout's recorded step never
        disagrees with the traffic it describes.

        With ``owner``, the endpoint must belong to that request when the write is made.
        With ``claim`` as well, the endpoint becomes ``owner``'s unless another request's
        release is under way or held on it (``OwnershipConflict``).

        ``expect`` (tag values, "" for an absent tag) and ``expect_traffic`` (the live
        shares) are what the writer last saw: when the endpoint says otherwise at the write,
        nothing is written and ``ConcurrentChange`` names what changed.
        """

    def evaluate_model(
        self, model: RegisteredModel, test_file: str, test_gen_file: str,
        parameters: dict[str, str],
    ) -> dict[str, float] | None:
        """Score a registered model on held-out files with the fine-tune job's evaluation
        code (test_sft loss, exact-answer rate), ``parameters`` being the job's inputs.

        None when the workspace cannot (Azure: its pipeline evaluates only the model it
        trains; scoring another needs an evaluation job of its own).
        """
        return None

    def set_model_stage(
        self, name: str, version: str, stage: ModelStage, tags: dict[str, str] | None = None
    ) -> RegisteredModel:
        """Record a registered version's stage (and ``tags``, such as the gate's figures).

        "production" and "candidate" name at most one version of a model: giving the stage
        to one version takes it from the others.
        """
        raise NotImplementedError(f"{self.kind} workspace does not record model stages")

    def record_release_event(self, event: ReleaseEvent) -> None:
        """Append ``event`` to its endpoint's release history, kept with the models
        (workspaces/release_history.py says where on each workspace)."""
        raise NotImplementedError(f"{self.kind} workspace keeps no release history")

    def release_history(self, endpoint_name: str) -> list[ReleaseEvent]:
        """The endpoint's release history as the workspace keeps it, newest first."""
        return []

    @abstractmethod
    def get_endpoint_keys(self, endpoint_name: str) -> EndpointKeys:
        """The endpoint's primary and secondary keys."""

    @abstractmethod
    def invoke(
        self,
        endpoint_name: str,
        body: dict[str, Any],
        deployment_name: str | None = None,
        caller: str | None = None,
        timeout_s: float = 90.0,
    ) -> ScoreResponse:
        """Send one scoring request with the endpoint key; return the raw answer.

        HTTP failures of the endpoint come back as a ScoreResponse with their status code;
        only failures to reach the workspace itself raise.
        """

    @abstractmethod
    def get_endpoint_activity(
        self, endpoint_name: str, start: datetime, end: datetime
    ) -> EndpointActivity:
        """Requests served in [start, end), split into the project's own and organic."""

    def get_endpoints_activity(
        self, endpoint_names: list[str], start: datetime, end: datetime
    ) -> dict[str, EndpointActivity]:
        """Activity of several endpoints over one window, keyed by endpoint name.

        The default reads them one by one; a workspace whose service answers many in one
        request (Azure Monitor's batch metrics query) overrides it. An endpoint whose
        activity could not be read is in the answer as ``EndpointActivity.unreadable``;
        a transient fault is raised, so the caller's retries read them all again.
        """
        from workspaces.errors import TransientWorkspaceError

        found = {}
        for name in endpoint_names:
            try:
                found[name] = self.get_endpoint_activity(name, start, end)
            except TransientWorkspaceError:
                raise
            except Exception as exc:  # noqa: BLE001 - one endpoint's fault is its own
                found[name] = EndpointActivity.unreadable(
                    name, start, end, f"{exc.__class__.__name__}: {str(exc)[:300]}")
        return found

    @abstractmethod
    def get_deployment_logs(self, endpoint_name: str, name: str, lines: int = 50) -> str:
        """Tail of a deployment's serving log."""

    @abstractmethod
    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        """Start deleting one deployment."""

    @abstractmethod
    def begin_delete_endpoint(self, name: str) -> None:
        """Start deleting an endpoint and its deployments; poll deletion_finished until True."""

    def deletion_finished(self, endpoint_name: str, deployment_name: str | None = None) -> bool:
        """Whether the deletion started by ``begin_delete_*`` is over (raises if it failed).

        The default reads the resource (one request per call) until it is gone. A workspace
        that follows the service's own deletion operation (Azure: the LRO poller, which
        polls at the interval the service's ``Retry-After`` asks for) answers from that,
        without a request of its own.
        """
        if deployment_name is None:
            return self.get_endpoint(endpoint_name) is None
        return self.get_deployment(endpoint_name, deployment_name) is None

    # -- data ----------------------------------------------------------------------------
    def local_data_root(self) -> Path | None:
        """Where this workspace wants downloads kept, if it cares (local: its state dir)."""
        return None

    def data_folder(self, folder: str) -> Path:
        """Where data named ``folder`` is prepared on this machine: an absolute path as
        given; a relative one under the workspace's own folder (local: its state dir), else
        under the user's cache folder, one per workspace identity. Never the current
        directory: on a worker that is the checkout."""
        if Path(folder).is_absolute():
            return Path(folder)
        own = self.local_data_root()
        if own is None:
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            scope = hashlib.sha256(self.cache_scope.encode()).hexdigest()[:16]
            own = cache / "chatft-flows" / f"{self.kind}-{scope}"
        return own / folder
