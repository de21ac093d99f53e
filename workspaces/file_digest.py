"""The sha256 of a file, the one way this project fingerprints data files and weights."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    """The sha256 of the file at ``path`` in hex, read in 1 MiB blocks.

    Example::

        sha256_of(Path("train_sft.jsonl"))   # '9f86d081884c7d65...'
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
