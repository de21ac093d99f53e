"""Write the small, deterministic ultrachat-shaped sample this project ships.

The sample keeps the schema of HuggingFaceH4/ultrachat_200k (``prompt``, ``prompt_id`` =
sha256 hex of the prompt, ``messages``) and its four splits, at about 1 % of their sizes,
so the local workspace trains and serves offline. The conversations are generated from
templates (arithmetic, units, geography, word games): simple enough that a tiny model
learns their shape in seconds.

Run: ``python scripts/make_sample_data.py`` (rewrites workspaces/local/sample_data/).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "workspaces" / "local" / "sample_data"
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


if __name__ == "__main__":
    main()
