"""The local fine-tune pipeline's interface: chat_completion_pipeline's inputs, kept here.

The local workspace takes the same inputs as the Azure ML ``chat_completion_pipeline``
version it mirrors (names, types, enums, minimums), so the pre-flight checks a request the
same way on both workspaces and a request that passes here passes on that Azure version.
Where the local pipeline is stricter (a minimum Azure does not declare) or uses another
default, :data:`LOCAL_CHANGES` says so and :func:`differences_from_mirror` lists it. Inputs
it takes but does not use (DeepSpeed on a CPU, say) carry the reason, and the pre-flight
reports them as ignored instead of dropping them silently.
"""

from __future__ import annotations

from typing import Any

from workspaces.interface import PipelineInput, PipelineInterface
from workspaces.pipeline_inputs import interface_differences

MIRRORED_COMPONENT = "chat_completion_pipeline"
MIRRORED_VERSION = "0.0.57"
LOCAL_COMPONENT = "local-finetune-pipeline"
LOCAL_VERSION = "1"

_TF = ["true", "false"]


def _in(type_: str, default: Any = None, *, enum: list[str] | None = None,
        min: float | None = None, optional: bool = True) -> PipelineInput:
    return PipelineInput(type=type_, default=None if default is None else str(default),
                         enum=enum, min=min, optional=optional)


# chat_completion_pipeline 0.0.57 (Azure/azureml-assets, pipeline_components/chat_completion/
# spec.yaml): every input with its type, default, enum and minimum.
MIRRORED_INPUTS: dict[str, PipelineInput] = {
    **{f"instance_type_{s}": _in("string", d) for s, d in (
        ("model_import", "Standard_d12_v2"), ("preprocess", "Standard_d12_v2"),
        ("finetune", "Standard_nc24rs_v3"), ("model_evaluation", "Standard_nc24rs_v3"))},
    "shm_size_finetune": _in("string", "5g"),
    "num_nodes_finetune": _in("integer", 1, min=1),
    "number_of_gpu_to_use_finetuning": _in("integer", 1, min=1),
    "huggingface_id": _in("string"),
    "pytorch_model_path": _in("custom_model"),
    "mlflow_model_path": _in("mlflow_model"),
    "task_name": _in("string", "ChatCompletion", enum=["ChatCompletion"], optional=False),
    "batch_size": _in("integer", 1000, min=1),
    "pad_to_max_length": _in("string", "false", enum=_TF),
    "max_seq_length": _in("integer", -1),
    **{f"{split}_file_path": _in("uri_file") for split in ("train", "validation", "test")},
    **{f"{split}_mltable_path": _in("mltable") for split in ("train", "validation", "test")},
    "apply_lora": _in("string", "false", enum=_TF),
    "merge_lora_weights": _in("string", "true", enum=_TF),
    "lora_alpha": _in("integer", 128),
    "lora_r": _in("integer", 8),
    "lora_dropout": _in("number", 0.0),
    "num_train_epochs": _in("integer", 1, min=1),
    "max_steps": _in("integer", -1),
    "per_device_train_batch_size": _in("integer", 1, min=1),
    "per_device_eval_batch_size": _in("integer", 1, min=1),
    "auto_find_batch_size": _in("string", "false", enum=_TF),
    "optim": _in("string", "adamw_hf", enum=["adamw_hf", "adamw_torch", "adafactor"]),
    "learning_rate": _in("number", 2e-05),
    "warmup_steps": _in("integer", 0),
    "weight_decay": _in("number", 0.0),
    "adam_beta1": _in("number", 0.9),
    "adam_beta2": _in("number", 0.999),
    "adam_epsilon": _in("number", 1e-08),
    "gradient_accumulation_steps": _in("integer", 1),
    "eval_accumulation_steps": _in("integer", -1),
    "lr_scheduler_type": _in("string", "linear", enum=[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup"]),
    "precision": _in("string", "32", enum=["32", "16"]),
    "seed": _in("integer", 42),
    "enable_full_determinism": _in("string", "false", enum=_TF),
    "dataloader_num_workers": _in("integer", 0),
    "ignore_mismatched_sizes": _in("string", "false", enum=_TF),
    "max_grad_norm": _in("number", 1.0),
    "evaluation_strategy": _in("string", "epoch", enum=["epoch", "steps"]),
    "evaluation_steps_interval": _in("number", 0.0),
    "eval_steps": _in("integer", 500),
    "logging_strategy": _in("string", "steps", enum=["epoch", "steps"]),
    "logging_steps": _in("integer", 10),
    "metric_for_best_model": _in("string", "loss", enum=["loss", "f1", "exact"]),
    "resume_from_checkpoint": _in("string", "false", enum=_TF),
    "save_total_limit": _in("integer", -1),
    "apply_early_stopping": _in("string", "false", enum=_TF),
    "early_stopping_patience": _in("integer", 1),
    "early_stopping_threshold": _in("number", 0.0),
    "apply_deepspeed": _in("string", "false", enum=_TF),
    "deepspeed": _in("uri_file"),
    "deepspeed_stage": _in("string", "2", enum=["2", "3"]),
    "apply_ort": _in("string", "false", enum=_TF),
    "evaluation_config": _in("uri_file"),
    "evaluation_config_params": _in("string"),
    **{f"compute_{s}": _in("string", "serverless")
       for s in ("model_import", "preprocess", "finetune", "model_evaluation")},
}

# Inputs the local training job reads (workspaces/local/finetune_job.training_settings),
# with the stricter minimums and other defaults it applies.
LOCAL_CHANGES: dict[str, dict[str, Any]] = {
    "learning_rate": {"default": "5e-06", "min": 0.0},
    "lora_alpha": {"default": "16", "min": 1.0},
    "lora_r": {"min": 1.0},
    "lora_dropout": {"min": 0.0},
    "max_steps": {"min": -1.0},
    "max_seq_length": {"min": -1.0},
    "save_total_limit": {"min": -1.0},
    "gradient_accumulation_steps": {"min": 1.0},
    "warmup_steps": {"min": 0.0},
    "weight_decay": {"min": 0.0},
    "seed": {"min": 0.0},
}
USED = {
    "mlflow_model_path", "train_file_path", "test_file_path",
    "compute_model_import", "compute_preprocess", "compute_finetune",
    "compute_model_evaluation", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "seed", "max_seq_length", "save_total_limit", "apply_lora", "lora_r",
    "lora_alpha", "lora_dropout",
}
# Why the local pipeline takes an input without using it; the rest: not implemented here.
IGNORED_BECAUSE = {
    "apply_deepspeed": "DeepSpeed does not run on this machine's CPU",
    "deepspeed_stage": "DeepSpeed does not run on this machine's CPU",
    "deepspeed": "DeepSpeed does not run on this machine's CPU",
    "apply_ort": "ONNX Runtime training is not used on a CPU",
    "precision": "the CPU trains in 32-bit precision",
    "number_of_gpu_to_use_finetuning": "this machine trains on its CPU, without GPUs",
    "num_nodes_finetune": "the local pipeline trains on one machine",
    "shm_size_finetune": "no container runs the local job",
    "merge_lora_weights": "the local pipeline always merges LoRA weights before saving",
    **{f"instance_type_{s}": "there is no serverless compute locally"
       for s in ("model_import", "preprocess", "finetune", "model_evaluation")},
}


def local_interface() -> PipelineInterface:
    """The interface the local workspace publishes (same shape as Azure's)."""
    inputs: dict[str, PipelineInput] = {}
    for name, mirrored in MIRRORED_INPUTS.items():
        ignored = None
        if name not in USED:
            ignored = IGNORED_BECAUSE.get(name, "the local pipeline does not implement it")
        inputs[name] = mirrored.model_copy(update={**LOCAL_CHANGES.get(name, {}),
                                                   "ignored": ignored})
    return PipelineInterface(
        component=LOCAL_COMPONENT,
        version=LOCAL_VERSION,
        inputs=inputs,
        mirrors=f"{MIRRORED_COMPONENT} {MIRRORED_VERSION}",
    )


def mirrored_interface() -> PipelineInterface:
    """The Azure component version the local pipeline keeps the interface of."""
    return PipelineInterface(
        component=MIRRORED_COMPONENT, version=MIRRORED_VERSION, inputs=dict(MIRRORED_INPUTS)
    )


def differences_from_mirror() -> list[str]:
    """Where the local pipeline takes an input differently from the Azure version it keeps."""
    return interface_differences(mirrored_interface(), local_interface())
