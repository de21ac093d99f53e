"""The fine-tune pipeline job of step 5 (docs/procedure.md), built from the registry's
chat_completion_pipeline.

Local data files are given as ``Input(type="uri_file", path=<local file>)``: on submission the
SDK uploads them to the workspace's default blob datastore (datastore GET, listSecrets,
blob PUTs) and sends ``azureml://datastores/...`` URIs in the job body. The upload is
content-addressed, so a re-submission after a crash does not upload twice.
"""

from __future__ import annotations

from typing import Any

from azure.ai.ml import Input
from azure.ai.ml.dsl import pipeline
from azure.ai.ml.entities import PipelineJob

from workspaces.interface import FinetuneJobSpec
from workspaces.pipeline_inputs import FINETUNE_STEP_INPUTS

COMPONENT_NAME = "chat_completion_pipeline"
# Tag on the job recording which component version ran, so get_job can report it.
TAG_COMPONENT_VERSION = "chatft-component-version"


def component_inputs(spec: FinetuneJobSpec) -> dict[str, Any]:
    """Keyword arguments of the component call, step 5 of docs/procedure.md.

    The pre-flight checks the same inputs (:func:`workspaces.pipeline_inputs.plan_inputs`)
    against the component's interface before anything is created.
    """
    inputs: dict[str, Any] = {
        "mlflow_model_path": spec.foundation_model.id,
        **dict.fromkeys(FINETUNE_STEP_INPUTS, spec.compute),
        "train_file_path": Input(type="uri_file", path=spec.train_file),
        "test_file_path": Input(type="uri_file", path=spec.test_file),
        "number_of_gpu_to_use_finetuning": spec.gpus_per_node,
        "num_nodes_finetune": spec.num_nodes,
    }
    inputs.update(spec.parameters)
    return inputs


def build_pipeline_job(spec: FinetuneJobSpec, component: Any) -> PipelineJob:
    """The pipeline job: display name, inputs, settings, deterministic name and tags."""
    inputs = component_inputs(spec)

    @pipeline(name=spec.display_name, display_name=spec.display_name)
    def create_pipeline() -> dict[str, Any]:
        chat_completion = component(**inputs)
        return {"trained_model": chat_completion.outputs.mlflow_model_folder}

    job: PipelineJob = create_pipeline()
    job.settings.force_rerun = True
    job.settings.continue_on_step_failure = False
    job.name = spec.name
    job.display_name = spec.display_name
    job.experiment_name = spec.experiment_name
    job.tags = {**spec.tags, TAG_COMPONENT_VERSION: str(component.version)}
    return job
