"""Score a registered model on held-out files with the fine-tune job's own evaluation code.

The release gate needs the model in production and the new model measured on the same
held-out data. When the production model's job was evaluated on other files, the local
workspace scores it again on the new request's files here: the same tokenization, loss
and greedy exact-answer check as the job's ``model_evaluation`` step
(:func:`workspaces.local.finetune_job.evaluate`), in a process of its own so torch and the
weights stay out of the flow's process.

    python -m workspaces.local.evaluate_model MODEL_DIR TEST_SFT TEST_GEN OUT_JSON \\
        [--max-seq-length N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workspaces.local.finetune_job import (
    GENERATION_EVAL_LIMIT,
    evaluate,
    question_and_answer,
    tokenize_conversation,
)
from workspaces.local.mlflow_models import load_components
from workspaces.local.state import write_json
from workspaces.local.thread_budget import ThreadBudget
from workspaces.ultrachat import read_jsonl


def score(model_dir: Path, test_file: Path, test_gen_file: Path, max_seq_length: int,
          batch_size: int) -> dict[str, float]:
    """test_sft loss, perplexity and exact-answer rate of the MLflow model in ``model_dir``."""
    import torch

    torch.manual_seed(0)
    # Scoring runs in this thread from start to end, so its share is taken once; the mark
    # keeps the others' shares right while it computes.
    budget = ThreadBudget.from_env("scorer")
    budget.apply()
    with budget.marked_busy():
        return _score(model_dir, test_file, test_gen_file, max_seq_length, batch_size)


def _score(model_dir: Path, test_file: Path, test_gen_file: Path, max_seq_length: int,
           batch_size: int) -> dict[str, float]:
    model, tokenizer = load_components(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    test = [tokenize_conversation(tokenizer, r["messages"], max_seq_length)
            for r in read_jsonl(test_file)]
    questions = [question_and_answer(r["messages"])
                 for r in read_jsonl(test_gen_file)[:GENERATION_EVAL_LIMIT]]
    metrics, _ = evaluate(model, tokenizer, test, questions, batch_size)
    return metrics


def main(argv: list[str]) -> int:
    """``python -m workspaces.local.evaluate_model``: score, write the figures to OUT_JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("test_file", type=Path)
    parser.add_argument("test_gen_file", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    metrics = score(args.model_dir, args.test_file, args.test_gen_file, args.max_seq_length,
                    args.batch_size)
    write_json(args.out, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
