"""Write the small, deterministic ultrachat-shaped sample this project ships.

The sample keeps the schema of HuggingFaceH4/ultrachat_200k (``prompt``, ``prompt_id`` =
sha256 hex of the prompt, ``messages``) and its four splits, at about 1 % of their sizes,
so the local workspace trains and serves offline. The conversations are generated from
templates (arithmetic, units, geography, word games): simple enough that a tiny model
learns their shape in seconds.

Beside it, ``sample_data_wrong_answers/``: the same questions with wrong answers in
train_sft (each row takes the next row's answers), and the sample's own held-out files
(links to them, so byte-identical). A model tuned on it must lose the release gate against
one tuned on the sample (docs/rollout.md).

Run: ``python scripts/make_sample_data.py`` (rewrites both folders).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "workspaces" / "local" / "sample_data"
WRONG_OUT = OUT.with_name("sample_data_wrong_answers")
SIZES = {"train_sft": 2079, "test_sft": 231, "train_gen": 2560, "test_gen": 283}

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Brazil": "Brasilia",
    "Egypt": "Cairo",
    "Norway": "Oslo",
    "Peru": "Lima",
    "Spain": "Madrid",
    "India": "New Delhi",
    "Chile": "Santiago",
    "Ghana": "Accra",
    "Italy": "Rome",
    "Poland": "Warsaw",
    "Vietnam": "Hanoi",
    "Mexico": "Mexico City",
}
WORDS = [
    "river",
    "planet",
    "garden",
    "window",
    "silver",
    "rocket",
    "candle",
    "forest",
    "yellow",
    "bridge",
    "pencil",
    "orange",
    "castle",
    "dragon",
    "summer",
    "winter",
]
COLORS = {
    ("blue", "yellow"): "green",
    ("red", "blue"): "purple",
    ("red", "yellow"): "orange",
    ("red", "white"): "pink",
    ("black", "white"): "grey",
    ("blue", "white"): "light blue",
}


def _arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    first = (f"What is {a} {op} {b}?", f"{a} {op} {b} is {value}.")
    if rng.random() < 0.4:
        c = rng.randint(2, 9)
        return [
            first,
            (f"And if you add {c} to that?", f"Adding {c} to {value} gives {value + c}."),
        ]
    return [first]


def _capital(rng: random.Random) -> list[tuple[str, str]]:
    country = rng.choice(sorted(CAPITALS))
    return [
        (f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}.")
    ]


def _units(rng: random.Random) -> list[tuple[str, str]]:
    km = rng.randint(1, 50)
    if rng.random() < 0.5:
        return [
            (f"How many meters are in {km} kilometers?", f"{km} kilometers are {km * 1000} meters.")
        ]
    minutes = rng.randint(2, 12)
    return [
        (
            f"How many seconds are in {minutes} minutes?",
            f"{minutes} minutes are {minutes * 60} seconds.",
        )
    ]


def _words(rng: random.Random) -> list[tuple[str, str]]:
    word = rng.choice(WORDS)
    kind = rng.choice(["reverse", "length", "first"])
    if kind == "reverse":
        return [(f"Spell the word {word} backwards.", f"{word} backwards is {word[::-1]}.")]
    if kind == "length":
        return [
            (
                f"How many letters does the word {word} have?",
                f"The word {word} has {len(word)} letters.",
            )
        ]
    return [(f"What is the first letter of {word}?", f"The first letter of {word} is {word[0]}.")]


def _colors(rng: random.Random) -> list[tuple[str, str]]:
    (a, b), result = rng.choice(sorted(COLORS.items()))
    return [
        (f"What color do you get when you mix {a} and {b}?", f"Mixing {a} and {b} gives {result}.")
    ]


TEMPLATES = [_arithmetic, _capital, _units, _words, _colors]


def make_row(rng: random.Random) -> dict:
    turns = rng.choice(TEMPLATES)(rng)
    messages = []
    for question, answer in turns:
        messages.append({"content": question, "role": "user"})
        messages.append({"content": answer, "role": "assistant"})
    prompt = turns[0][0]
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "messages": messages,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for index, (split, size) in enumerate(SIZES.items()):
        rng = random.Random(1000 + index)
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for _ in range(size):
                handle.write(json.dumps(make_row(rng)) + "\n")
        print(f"wrote {size} rows to {OUT / (split + '.jsonl')}")
    write_wrong_answers()


def wrong_answers(rows: list[dict]) -> list[dict]:
    """Each row keeps its questions and takes the next row's answers (cycled)."""
    wrong = []
    for index, row in enumerate(rows):
        donor = [m["content"] for m in rows[(index + 1) % len(rows)]["messages"]
                 if m["role"] == "assistant"]
        answers = iter(donor * len(row["messages"]))
        messages = [
            {"content": next(answers) if m["role"] == "assistant" else m["content"],
             "role": m["role"]}
            for m in row["messages"]
        ]
        wrong.append({**row, "messages": messages})
    return wrong


def write_wrong_answers() -> None:
    WRONG_OUT.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (OUT / "train_sft.jsonl").read_text().splitlines()]
    with (WRONG_OUT / "train_sft.jsonl").open("w", encoding="utf-8") as handle:
        for row in wrong_answers(rows):
            handle.write(json.dumps(row) + "\n")
    for split in ("train_gen", "test_sft", "test_gen"):
        link = WRONG_OUT / f"{split}.jsonl"
        link.unlink(missing_ok=True)
        link.symlink_to(Path("..") / OUT.name / f"{split}.jsonl")
    print(f"wrote {len(rows)} rows with wrong answers to {WRONG_OUT / 'train_sft.jsonl'}")


if __name__ == "__main__":
    main()
