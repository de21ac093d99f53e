"""The fine-tune job's training and evaluation parts, on the stand-in model and sample data.

Batches of rows of about one length (less padding), a loss computed on the target tokens
only that is the model's own loss, held-out replies returned in the order asked.
"""

from __future__ import annotations

import random

import pytest

from workspaces.local.finetune_job import (
    LengthGroupedOrder,
    PaddingCollator,
    by_length,
    generate_replies,
    mean_token_loss,
    question_and_answer,
    target_token_loss,
    tokenize_conversation,
)
from workspaces.ultrachat import SAMPLE_DIR, read_jsonl


@pytest.fixture(scope="module")
def standin(standin_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(standin_dir)
    model = AutoModelForCausalLM.from_pretrained(standin_dir)
    return model, tokenizer


def sample_rows(tokenizer, split: str, count: int) -> list[dict]:
    return [tokenize_conversation(tokenizer, r["messages"], 256)
            for r in read_jsonl(SAMPLE_DIR / f"{split}.jsonl")[:count]]


def padded_cells(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def test_training_batches_hold_rows_of_about_one_length_and_change_each_epoch():
    draw = random.Random(1)
    lengths = [draw.choice([40, 70, 100, 140, 200]) + draw.randrange(5) for _ in range(101)]
    order = LengthGroupedOrder(lengths, batch_size=8, seed=42)
    first, second = list(order), list(order)
    assert sorted(first) == sorted(second) == list(range(101))  # every row once per epoch
    assert first != second
    shuffled = list(range(101))
    draw.shuffle(shuffled)
    useful = sum(lengths)
    assert useful / padded_cells(first, lengths, 8) > 0.85
    assert useful / padded_cells(shuffled, lengths, 8) < 0.65
    # the same seed gives the same epochs: a re-run trains on the same batches
    assert list(LengthGroupedOrder(lengths, batch_size=8, seed=42)) == first


def test_the_loss_on_target_tokens_is_the_models_own_loss(standin):
    import torch

    model, tokenizer = standin
    collate = PaddingCollator(tokenizer.pad_token_id)
    batch = collate(sample_rows(tokenizer, "train_sft", 6))
    model.eval()
    with torch.no_grad():
        loss, targets = target_token_loss(model, batch)
        stock = model(**batch).loss
    assert targets == int((batch["labels"][:, 1:] != -100).sum())
    assert float(loss) / targets == pytest.approx(float(stock), rel=1e-5)
    assert collate.tokens == int(batch["attention_mask"].sum())
    assert collate.cells == batch["input_ids"].numel()


def test_test_sft_loss_does_not_depend_on_the_order_of_the_rows(standin):
    model, tokenizer = standin
    rows = sample_rows(tokenizer, "test_sft", 12)
    assert [len(r["input_ids"]) for r in by_length(rows)] == sorted(
        len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id
    assert mean_token_loss(model, rows, pad, 4) == pytest.approx(
        mean_token_loss(model, rows[::-1], pad, 1), rel=1e-5)


def test_held_out_replies_come_back_in_the_order_asked(standin):
    model, tokenizer = standin
    questions = [question_and_answer(r["messages"])[0]
                 for r in read_jsonl(SAMPLE_DIR / "test_gen.jsonl")[:5]]
    replies = generate_replies(model, tokenizer, questions, batch_size=2)
    assert generate_replies(model, tokenizer, questions[::-1], batch_size=2) == replies[::-1]
    assert len(replies) == 5
