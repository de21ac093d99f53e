"""Benchmark LoRA training of SmolLM2-135M-Instruct: our job against a plain Trainer.

Prints figures, asserts nothing:

- useful tokens/s of the local fine-tune job (the detached process the flow submits:
  status file, MLflow logging, cancel checks, progress) on the shipped sample's train_sft
  rows: the conversations' own tokens trained on per second of training, padding not
  counted (it is computed, but it is not progress);
- the same for a plain ``transformers.Trainer`` + peft LoRA written here as a user would,
  with the same hyper-parameters on the same rows and the same token masking (random
  batches, the stock collator and loss);
- their ratio, each side's share of padding, and the job's before/after evaluation
  (test_sft loss, perplexity, exact-answer rate on held-out test_gen questions).

Run: ``python scripts/bench_training.py [--state-dir DIR] [--epochs N] [--rounds N]``. The
state directory keeps the converted model between runs (default: a folder under /tmp).
The sides run minutes apart: on a shared machine, use several rounds (they take turns at
going first) and read the ratio of all rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def job_parameters(model, epochs: int) -> dict[str, str]:  # noqa: ANN001
    from flows.parameters import FinetuneRequest
    from workspaces.model_tags import model_specific_defaults

    inputs = FinetuneRequest().training.as_component_inputs()
    return {**inputs, **model_specific_defaults(model), "num_train_epochs": str(epochs)}


def run_job(state: Path, epochs: int) -> tuple[dict, dict, str, str]:
    """Our job, submitted as the flow does; returns its train and evaluation metrics."""
    from workspaces import compute_provisioning
    from workspaces.interface import FinetuneJobSpec
    from workspaces.local import LocalWorkspace
    from workspaces.ultrachat import prepare_dataset

    ws = LocalWorkspace(state)
    model = ws.get_foundation_model(ws.default_foundation_model)
    weights = ws.prepare_foundation_model(model, print)
    compute_provisioning.ensure_compute(ws, "local-cpu", "Local_CPU", 1)
    data = prepare_dataset("sample", 5, state / "download")
    name = f"bench-training-{int(time.time())}"
    spec = FinetuneJobSpec(
        name=name, display_name=name, experiment_name="bench-training",
        foundation_model=model, compute="local-cpu",
        train_file=data.files["train_sft"], test_file=data.files["test_sft"],
        test_gen_file=data.files["test_gen"], gpus_per_node=0,
        parameters=job_parameters(model, epochs),
    )
    ws.submit_finetune_job(spec)
    while not (job := ws.get_job(name)).is_terminal:
        time.sleep(1)
    if job.status != "Completed":
        raise SystemExit(f"job {name} ended {job.status}: {job.error}")
    metrics = ws.get_job_metrics(name)
    return metrics.finetune, metrics.evaluation, weights, data.files["train_sft"]


class CountingCollator:
    """The plain Trainer's collator, counting the tokens it keeps and the padded cells."""

    def __init__(self, collate) -> None:  # noqa: ANN001
        self.collate = collate
        self.tokens = 0
        self.cells = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.tokens += int(batch["attention_mask"].sum())
        self.cells += batch["attention_mask"].numel()
        return batch


def run_plain_trainer(weights: str, train_file: str, parameters: dict[str, str]) -> dict:
    """A plain Trainer with the same LoRA config, hyper-parameters, rows and masking."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from workspaces.local.finetune_job import tokenize_conversation, training_settings
    from workspaces.ultrachat import read_jsonl

    settings = training_settings(parameters)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=settings["lora_r"], lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"], target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    ))
    rows = [
        tokenize_conversation(tokenizer, r["messages"], settings["max_seq_length"])
        for r in read_jsonl(Path(train_file))
    ]
    collate = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=out,
                num_train_epochs=settings["num_train_epochs"],
                per_device_train_batch_size=settings["per_device_train_batch_size"],
                learning_rate=settings["learning_rate"],
                lr_scheduler_type=settings["lr_scheduler_type"],
                seed=settings["seed"], save_strategy="no", report_to=[], use_cpu=True,
                disable_tqdm=True, logging_steps=10,
            ),
            train_dataset=rows,
            data_collator=collate,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    return {
        "train_runtime": seconds,
        "train_tokens": float(collate.tokens),
        "train_tokens_per_second": collate.tokens / seconds,
        "train_padding_fraction": 1 - collate.tokens / collate.cells,
        "train_loss": float(result.training_loss),
        "train_steps": float(result.global_step),
    }


def print_side(label: str, figures: dict) -> None:
    padding = figures.get("train_padding_fraction", math.nan)
    print(f"  {label} {figures['train_tokens_per_second']:7.1f} useful tokens/s "
          f"({figures['train_runtime']:.1f} s, {int(figures['train_steps'])} steps, "
          f"loss {figures['train_loss']:.3f}, {padding:.1%} of the batches padding)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", default=str(Path(tempfile.gettempdir()) / "chatft-bench"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="job and plain Trainer this many times each, in turns (job first, "
                        "then plain first...): on a shared machine the load drifts")
    args = parser.parse_args()
    state = Path(args.state_dir)
    from workspaces.local import LocalWorkspace

    ws = LocalWorkspace(state)
    parameters = job_parameters(ws.get_foundation_model(ws.default_foundation_model), args.epochs)
    rounds: list[tuple[dict, dict]] = []
    weights = train_file = ""
    for number in range(args.rounds):
        if number % 2:
            plain = run_plain_trainer(weights, train_file, parameters)
        job, evaluation, weights, train_file = run_job(state, args.epochs)
        if not number % 2:
            plain = run_plain_trainer(weights, train_file, parameters)
        rounds.append((job, plain))

    print()
    print(f"rows: {int(job['train_samples'])} train_sft conversations, {args.epochs} epochs, "
          f"LoRA r={parameters['lora_r']} on q_proj/v_proj, batch "
          f"{parameters['per_device_train_batch_size']}, lr {parameters['learning_rate']}")
    for number, (job, plain) in enumerate(rounds, 1):
        print(f"round {number} ({'plain Trainer' if number % 2 == 0 else 'job'} first):")
        print_side("our job:      ", job)
        print_side("plain Trainer:", plain)
        ratio = job["train_tokens_per_second"] / plain["train_tokens_per_second"]
        print(f"  ratio job / plain (useful tokens/s): {ratio:.3f}")
    speed = {}
    for i, side in enumerate(("job", "plain")):
        tokens = sum(r[i]["train_tokens_per_second"] * r[i]["train_runtime"] for r in rounds)
        speed[side] = tokens / sum(r[i]["train_runtime"] for r in rounds)
    print(f"all rounds: job {speed['job']:.1f}, plain {speed['plain']:.1f} useful tokens/s, "
          f"ratio {speed['job'] / speed['plain']:.3f} (goal >= 1.3)")
    print()
    print("evaluation (last job)  base      tuned")
    for key, label in (("eval_loss", "test_sft loss"), ("perplexity", "perplexity"),
                       ("exact_answer_rate", "exact-answer rate")):
        base, tuned = evaluation.get(f"base_{key}", math.nan), evaluation.get(key, math.nan)
        print(f"{label:<20} {base:8.3f}  {tuned:8.3f}")
    print(f"held-out questions: {int(evaluation.get('generation_questions', 0))}")


if __name__ == "__main__":
    main()
