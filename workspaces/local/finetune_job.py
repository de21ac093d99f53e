"""The local fine-tune job: a detached process that mirrors the Azure chat_completion_pipeline.

Run as ``python -m workspaces.local.finetune_job <job_dir>``. It reads ``spec.json``, walks
the pipeline's steps (model_import, preprocess, finetune, model_evaluation), writes its
status to ``status.json`` as it goes, logs metrics to MLflow runs shaped like Azure's
finetune and evaluation child runs, and leaves an MLflow model folder in
``outputs/trained_model`` (the job's ``trained_model`` output).

Training is real: transformers ``Trainer`` with optional LoRA (peft), loss on assistant
tokens only, evaluation loss and perplexity on test_sft.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workspaces.errors import ParseError
from workspaces.local import mlflow_store
from workspaces.local.state import locked, read_json, write_json
from workspaces.scoring import normalize_answer
from workspaces.ultrachat import read_jsonl

logger = logging.getLogger("finetune_job")

STEPS = ("model_import", "preprocess", "finetune", "model_evaluation")


class JobCanceled(Exception):
    """Raised in the job's main thread when it receives SIGTERM."""


class InvalidParameter(ParseError):
    """A fine-tune parameter has a value the job cannot use."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise JobCanceled("the job received a cancel request")


CANCEL_FILE = "cancel-requested"


def check_cancel(job_dir: Path) -> None:
    """Stop at the next step boundary once a cancel was asked for.

    A file, not only SIGTERM: libraries loaded by the job may install their own handlers.
    """
    if (job_dir / CANCEL_FILE).exists():
        raise JobCanceled("the job was canceled on request")


class JobStatus:
    """Read-modify-write of status.json, the job's only channel to the outside."""

    def __init__(self, job_dir: Path) -> None:
        self.path = job_dir / "status.json"

    def update(self, **fields: Any) -> None:
        # The lock is the one the workspace takes to declare the job gone or take it back.
        with locked(self.path.parent / ".status.lock"):
            data = read_json(self.path) or {}
            data.update(fields)
            data["updated_at"] = time.time()
            write_json(self.path, data)


# -- parameters -------------------------------------------------------------------------


def _number(params: dict[str, str], name: str, kind: type, default: Any, minimum: float) -> Any:
    raw = params.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except ValueError as exc:
        raise InvalidParameter(f"fine-tune parameter {name}={raw!r} is not a number") from exc
    if value < minimum:
        raise InvalidParameter(f"fine-tune parameter {name}={raw!r} must be at least {minimum}")
    return value


def _flag(params: dict[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if str(raw).lower() not in ("true", "false"):
        raise InvalidParameter(f"fine-tune parameter {name}={raw!r}; allowed: 'true' or 'false'")
    return str(raw).lower() == "true"


def training_settings(params: dict[str, str]) -> dict[str, Any]:
    """The component's string parameters as typed training settings."""
    max_seq = _number(params, "max_seq_length", int, -1, -1)
    save_limit = _number(params, "save_total_limit", int, -1, -1)
    return {
        "num_train_epochs": _number(params, "num_train_epochs", float, 1.0, 0.0),
        "max_steps": _number(params, "max_steps", int, -1, -1),
        "per_device_train_batch_size": _number(params, "per_device_train_batch_size", int, 1, 1),
        "per_device_eval_batch_size": _number(params, "per_device_eval_batch_size", int, 1, 1),
        "gradient_accumulation_steps": _number(params, "gradient_accumulation_steps", int, 1, 1),
        "learning_rate": _number(params, "learning_rate", float, 5e-6, 0.0),
        "lr_scheduler_type": params.get("lr_scheduler_type") or "linear",
        "warmup_steps": _number(params, "warmup_steps", int, 0, 0),
        "weight_decay": _number(params, "weight_decay", float, 0.0, 0.0),
        "seed": _number(params, "seed", int, 42, 0),
        "max_seq_length": max_seq if max_seq > 0 else 1024,
        "save_total_limit": None if save_limit < 0 else save_limit,
        "apply_lora": _flag(params, "apply_lora", False),
        "lora_r": _number(params, "lora_r", int, 8, 1),
        "lora_alpha": _number(params, "lora_alpha", int, 16, 1),
        "lora_dropout": _number(params, "lora_dropout", float, 0.0, 0.0),
        "apply_deepspeed": _flag(params, "apply_deepspeed", False),
    }


# -- preprocessing ----------------------------------------------------------------------


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> dict:
    """Token ids of a chat and labels that keep only the assistant tokens (-100 elsewhere)."""

    def ids(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    full = ids(messages, gen=False)
    labels = [-100] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(ids(messages[:i], gen=True)) if i else 0
        end = len(ids(messages[: i + 1], gen=False))
        # The template ends a chat with eos; inside a longer chat the next turn follows.
        end = min(end, len(full))
        labels[start:end] = full[start:end]
    return {"input_ids": full[:max_len], "labels": labels[:max_len]}


def _collate(pad_id: int):
    import torch

    def collate(batch: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in batch)
        input_ids, labels, mask = [], [], []
        for item in batch:
            pad = width - len(item["input_ids"])
            input_ids.append(item["input_ids"] + [pad_id] * pad)
            labels.append(item["labels"] + [-100] * pad)
            mask.append([1] * len(item["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }

    return collate


# -- evaluation -------------------------------------------------------------------------

# Held-out questions asked of the base and the tuned model; bounded so evaluation stays short.
GENERATION_EVAL_LIMIT = 50
GENERATION_EVAL_TOKENS = 32


def question_and_answer(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """A test_gen row as (conversation up to its last question, the reference answer)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return list(messages[:last]), messages[last]["content"]


def mean_token_loss(
    model: Any, rows: list[dict], pad_id: int, batch_size: int,
    doing: Callable[[str], None] = lambda _: None,
) -> float:
    """Cross-entropy per assistant token over ``rows`` (token-weighted, not batch-weighted).

    ``doing`` hears which batch is under way (the job's status says it to the flow).
    """
    import torch

    collate = _collate(pad_id)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            doing(f"test_sft loss: conversations {start + 1}-"
                  f"{min(start + batch_size, len(rows))} of {len(rows)}")
            batch = collate(rows[start : start + batch_size])
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(losses)
            count += int((labels != -100).sum())
    return total / max(count, 1)


def generate_replies(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int = 16,
    doing: Callable[[str], None] = lambda _: None,
) -> list[str]:
    """Greedy replies to each conversation, with the model's chat template (left-padded)."""
    import torch

    replies: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for start in range(0, len(conversations), batch_size):
            doing(f"held-out questions {start + 1}-"
                  f"{min(start + batch_size, len(conversations))} of {len(conversations)}")
            inputs = tokenizer.apply_chat_template(
                conversations[start : start + batch_size],
                add_generation_prompt=True,
                padding=True,
                return_tensors="pt",
                return_dict=True,
            )
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=GENERATION_EVAL_TOKENS,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return replies


def evaluate(
    model: Any, tokenizer: Any, test: list[dict], questions: list[tuple], batch_size: int,
    doing: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, float], list[str]]:
    """test_sft loss and perplexity, and the exact-answer rate on held-out questions."""
    loss = mean_token_loss(model, test, tokenizer.pad_token_id, batch_size, doing)
    replies = generate_replies(model, tokenizer, [q for q, _ in questions], doing=doing)
    exact = sum(normalize_answer(r) == normalize_answer(a) for r, (_, a) in zip(
        replies, questions, strict=True))
    metrics = {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "exact_answer_rate": exact / len(questions) if questions else 0.0,
        "exact_answers": float(exact),
        "eval_samples": float(len(test)),
        "generation_questions": float(len(questions)),
    }
    return metrics, replies


# -- the job ----------------------------------------------------------------------------


def input_hashes(spec: dict[str, Any]) -> dict[str, str]:
    """sha256 of the files this job trains and evaluates on, as lineage tags."""
    from workspaces.file_digest import sha256_of

    hashes = {
        "train-sha256": sha256_of(Path(spec["train_file"])),
        "test-sha256": sha256_of(Path(spec["test_file"])),
    }
    if spec.get("test_gen_file"):
        hashes["test-gen-sha256"] = sha256_of(Path(spec["test_gen_file"]))
    weights = Path(spec["weights"])
    build = read_json(weights / "BUILD.json") if weights.is_dir() else None
    if build and build.get("sha256"):
        hashes["base-weights-sha256"] = build["sha256"]
    return hashes


def run(job_dir: Path) -> None:
    spec = json.loads((job_dir / "spec.json").read_text())
    status = JobStatus(job_dir)
    status.update(status="Running", pid=os.getpid(), started_at=time.time(), current_step=STEPS[0],
                  activity="importing torch, transformers and MLflow")

    def doing(activity: str | None) -> None:
        """What the running step does now: the flow logs it, so no phase is silent."""
        status.update(activity=activity)

    import mlflow
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
    )

    torch.manual_seed(0)
    params: dict[str, str] = spec["parameters"]
    settings = training_settings(params)
    # Tables and experiment made under a lock: another first job may open the database now.
    doing("opening the MLflow tracking store")
    experiment_id = mlflow_store.experiment_id(
        spec["tracking_uri"], spec["experiment_name"], spec["artifact_root"]
    )
    mlflow.set_tracking_uri(spec["tracking_uri"])

    run_tags = {"job_name": spec["name"], **spec.get("tags", {})}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=spec["name"], tags={**run_tags, "step": "pipeline"}
    ) as parent:
        status.update(mlflow_run_id=parent.info.run_id)
        mlflow.log_params({k: v for k, v in params.items()})
        if settings["apply_deepspeed"]:
            logger.warning("apply_deepspeed=true is not applicable on a CPU; recorded and ignored")
            mlflow.set_tag("apply_deepspeed", "not applicable on CPU (recorded, ignored)")

        # model_import
        logger.info("model_import: loading %s", spec["weights"])
        doing(f"loading the tokenizer of {spec['foundation_model']['name']}")
        tokenizer = AutoTokenizer.from_pretrained(spec["weights"])
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        doing(f"loading the weights of {spec['foundation_model']['name']}")
        model = AutoModelForCausalLM.from_pretrained(spec["weights"], dtype=torch.float32)

        # preprocess: the files hashed here are the files trained on (lineage)
        check_cancel(job_dir)
        status.update(current_step="preprocess", activity="hashing the input files")
        hashes = input_hashes(spec)
        status.update(inputs_sha256=hashes)
        mlflow.set_tags(hashes)
        max_len = settings["max_seq_length"]
        doing("tokenizing the conversations")
        train_rows = read_jsonl(Path(spec["train_file"]))
        test_rows = read_jsonl(Path(spec["test_file"]))
        gen_rows = read_jsonl(Path(spec["test_gen_file"])) if spec.get("test_gen_file") else []
        train = [tokenize_conversation(tokenizer, r["messages"], max_len) for r in train_rows]
        test = [tokenize_conversation(tokenizer, r["messages"], max_len) for r in test_rows]
        questions = [question_and_answer(r["messages"]) for r in gen_rows[:GENERATION_EVAL_LIMIT]]
        train_tokens = sum(len(x["input_ids"]) for x in train)
        logger.info(
            "preprocess: %d train and %d test conversations, %d held-out questions",
            len(train), len(test), len(questions),
        )

        # the base model, measured the same way as the tuned one will be
        check_cancel(job_dir)
        status.update(current_step="baseline_evaluation", activity=None)
        eval_batch = settings["per_device_eval_batch_size"]
        base_metrics, base_replies = evaluate(model, tokenizer, test, questions, eval_batch,
                                              doing)
        logger.info("baseline_evaluation: %s", _rounded(base_metrics))
        status.update(base_metrics=base_metrics)

        # finetune
        check_cancel(job_dir)
        status.update(current_step="finetune", progress=0.0, activity=None)
        if settings["apply_lora"]:
            doing("adding LoRA adapters")
            from peft import LoraConfig, get_peft_model

            targets = _lora_targets(model)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=settings["lora_r"],
                    lora_alpha=settings["lora_alpha"],
                    lora_dropout=settings["lora_dropout"],
                    target_modules=targets,
                    task_type="CAUSAL_LM",
                ),
            )
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name="finetune",
            nested=True,
            tags={**run_tags, "step": "finetune"},
        ) as finetune_run:
            status.update(finetune_run_id=finetune_run.info.run_id)

            class Reporter(TrainerCallback):
                """Training logs to MLflow and to status.json, where the flow reads them."""

                def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                    numeric = {
                        k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)
                    }
                    if numeric:
                        mlflow.log_metrics(numeric, step=state.global_step)
                    if "loss" in numeric:
                        status.update(
                            training={
                                "step": state.global_step,
                                "max_steps": state.max_steps,
                                "epoch": round(float(state.epoch or 0.0), 3),
                                "loss": round(numeric["loss"], 4),
                            }
                        )
                        logger.info(
                            "finetune: step %d/%d epoch %.2f loss %.4f",
                            state.global_step, state.max_steps, state.epoch or 0.0,
                            numeric["loss"],
                        )

                def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
                    doing(f"training step 1 of {state.max_steps} under way")

                def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                    check_cancel(job_dir)
                    if state.max_steps:
                        # the steps themselves say how far training is from here on
                        status.update(progress=round(state.global_step / state.max_steps, 4),
                                      activity=None)

            doing("preparing the trainer")
            arguments = training_arguments(settings, job_dir / "checkpoints", len(train))
            trainer = Trainer(
                model=model,
                args=arguments,
                train_dataset=train,
                data_collator=_collate(tokenizer.pad_token_id),
                callbacks=[Reporter()],
            )
            started = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - started
            tokens_seen = train_tokens * settings["num_train_epochs"]
            summary = {
                "train_loss": float(result.training_loss),
                "train_runtime": seconds,
                "train_steps": float(result.global_step),
                "train_tokens_per_second": tokens_seen / seconds if seconds else 0.0,
                "train_samples": float(len(train)),
            }
            mlflow.log_metrics(summary)
            status.update(train_metrics=summary, progress=1.0)

        # model_evaluation: the tuned model against the base model, same data, same code
        check_cancel(job_dir)
        status.update(current_step="model_evaluation", activity=None)
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name="evaluation",
            nested=True,
            tags={**run_tags, "step": "model_evaluation"},
        ) as eval_run:
            tuned_metrics, tuned_replies = evaluate(model, tokenizer, test, questions,
                                                    eval_batch, doing)
            logger.info("model_evaluation: %s", _rounded(tuned_metrics))
            eval_metrics = {
                **tuned_metrics,
                **{f"base_{k}": v for k, v in base_metrics.items()},
            }
            mlflow.log_metrics(eval_metrics)
            samples = [
                {
                    "messages": q,
                    "reference": a,
                    "base_reply": b,
                    "tuned_reply": t,
                }
                for (q, a), b, t in zip(questions, base_replies, tuned_replies, strict=True)
            ]
            evaluation_file = job_dir / "outputs" / "evaluation.json"
            write_json(evaluation_file, {"metrics": eval_metrics, "samples": samples})
            mlflow.log_artifact(str(evaluation_file))
            status.update(eval_metrics=eval_metrics, evaluation_run_id=eval_run.info.run_id)

        # trained_model output: base + adapter merged, as an MLflow model folder
        check_cancel(job_dir)
        status.update(current_step="save_model", activity="merging the adapters into the model"
                      if settings["apply_lora"] else None)
        merged = model.merge_and_unload() if settings["apply_lora"] else model
        output = job_dir / "outputs" / "trained_model"
        if output.exists():
            shutil.rmtree(output)
        doing("writing the MLflow model folder")
        mlflow.transformers.save_model(
            transformers_model={"model": merged, "tokenizer": tokenizer},
            path=str(output),
            task="text-generation",
            pip_requirements=["transformers", "torch", "mlflow"],
            metadata={
                "base_model": spec["foundation_model"]["id"],
                "job_name": spec["name"],
                "stand_in": spec["foundation_model"]["tags"].get("stand_in", "false"),
                **hashes,
            },
        )
        doing("copying the model into the MLflow run's artifacts")
        mlflow.log_artifacts(str(output), artifact_path="trained_model")
        # The checkpoints are only needed while training; the model folder is the output.
        shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
    status.update(status="Completed", current_step=None, activity=None, ended_at=time.time(),
                  output=str(output))


def training_arguments(settings: dict[str, Any], output_dir: Path, rows: int) -> Any:
    """The Trainer's arguments for these settings (the benchmark uses the same)."""
    from transformers import TrainingArguments

    per_step = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    steps = settings["max_steps"]
    if steps <= 0:
        steps = math.ceil(settings["num_train_epochs"] * math.ceil(rows / per_step))
    save = settings["save_total_limit"]
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=settings["num_train_epochs"],
        max_steps=settings["max_steps"],
        per_device_train_batch_size=settings["per_device_train_batch_size"],
        per_device_eval_batch_size=settings["per_device_eval_batch_size"],
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        learning_rate=settings["learning_rate"],
        lr_scheduler_type=settings["lr_scheduler_type"],
        warmup_steps=settings["warmup_steps"],
        weight_decay=settings["weight_decay"],
        seed=settings["seed"],
        # About 50 progress lines per job, whatever its length.
        logging_steps=max(1, steps // 50),
        save_strategy="no" if save == 0 else "epoch",
        save_total_limit=save if save else None,
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def _lora_targets(model: Any) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for candidates in (["qkv_proj", "o_proj"], ["q_proj", "v_proj"], ["c_attn"]):
        if set(candidates) <= names:
            return candidates
    raise InvalidParameter("apply_lora=true but no known attention projection to adapt")


def main(argv: list[str]) -> int:
    job_dir = Path(argv[1]).resolve()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    status = JobStatus(job_dir)
    try:
        run(job_dir)
        return 0
    except JobCanceled as exc:
        status.update(status="Canceled", error=str(exc), ended_at=time.time())
        return 143
    except InvalidParameter as exc:
        status.update(status="Failed", error=str(exc), ended_at=time.time())
        return 2
    except Exception as exc:  # the job must always leave a final status
        traceback.print_exc()
        status.update(
            status="Failed", error=f"{exc.__class__.__name__}: {exc}", ended_at=time.time()
        )
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
