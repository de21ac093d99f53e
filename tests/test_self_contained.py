"""The repository is self-contained: no project file refers to a path outside its own tree.

A fresh clone on a machine with no folder beside it must build and pass its tests, so code,
tests, scripts, the Makefile and the docs may not point at absolute machine paths or climb
out of the repository with ``../``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Never project files: virtualenvs, caches, local state, downloads.
SKIP_DIRS = {
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".prefect",
    ".workspace", "build", "dist", "ultrachat_200k_dataset", "node_modules",
}
TEXT_SUFFIXES = {
    ".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".json", ".jsonl",
    ".csv", ".sh", "",
}
# Absolute paths of a particular machine (this one's shared folders, anyone's home).
ABSOLUTE = re.compile(r"(?<![\w.:/-])(/work/|/home/[\w.-]+|/Users/[\w.-]+|/root/|~/\w)")
# A relative path that may climb out of the tree: resolved against the file's folder.
RELATIVE_UP = re.compile(r"(?:[\w.-]+/)*(?:\.\./)+[\w.-][\w./-]*")


def project_files() -> list[Path]:
    """Files under version control plus new, not-ignored ones; a plain walk without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
        files = [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if p.is_file()]
    return [
        p for p in files
        if p.is_file()
        and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
        and p.suffix in TEXT_SUFFIXES
    ]


def outside_references(text: str, folder: Path) -> list[str]:
    """Each ``line: path`` of ``text`` (a file in ``folder``) naming a path outside the repo."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        hits = [m.group(0) for m in ABSOLUTE.finditer(line)]
        hits += [
            m.group(0)
            for m in RELATIVE_UP.finditer(line)
            if not (folder / m.group(0)).resolve().is_relative_to(ROOT)
        ]
        found += [f"{number}: {hit}" for hit in hits]
    return found


def test_no_project_file_refers_to_a_path_outside_the_repository() -> None:
    files = project_files()
    assert any(f.name == "service.py" for f in files), "the scan must see the fake's code"
    problems = [
        f"{f.relative_to(ROOT)}:{hit}"
        for f in files
        if f != Path(__file__).resolve()  # this file spells the patterns out
        for hit in outside_references(f.read_text(errors="replace"), f.parent)
    ]
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


def test_the_scan_catches_machine_paths_and_climbing_out() -> None:
    text = "\n".join([
        'EXAMPLES = Path("/work/shared/azure-reference/examples")',
        "see ../../shared/NOTES.md",
        'HOME = "/home/alice/data"',
        "fine: ../README.md, server.md, https://example.com/work/x, a/../b",
    ])
    # as if written in docs/
    assert outside_references(text, ROOT / "docs") == [
        "1: /work/", "2: ../../shared/NOTES.md", "3: /home/alice",
    ]
