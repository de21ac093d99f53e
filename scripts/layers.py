"""The project's import layers, checked: no module imports from a layer above its own.

    python -m scripts.layers          # from the repository's root

Prints the layers, top to bottom, with their modules and what each layer imports from
the layers below, then every upward import as ``file:line: module imports name (layer a
imports layer b)``; exits 1 when there is one, 0 otherwise. Every import counts, also one
inside a function (a late import is still a dependency), and relative imports are resolved
against their package. tests/ is not checked: a test may reach into any layer.

The layers: scripts -> flows -> server -> tasks, blocks -> workspaces. A layer may
import from any layer below it; tasks and blocks share one. The server package sits below
flows because ``chatft server`` (flows/commands.py) dispatches to it: the server never
imports a flow, not even inside a function; it reaches the flows only through prefect.yaml's
entrypoints, which Prefect's worker runs. It uses the blocks (their types, the
notification's).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Top to bottom; each entry is one layer, named by the top-level packages it holds.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("scripts",),
    ("flows",),
    ("server",),
    ("tasks", "blocks"),
    ("workspaces",),
)


@dataclass(frozen=True)
class Import:
    """One import of a project module, where it is written."""

    file: Path
    line: int
    importer: str
    imported: str


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in :data:`LAYERS` (0 = top), None if it has none."""
    top = module.split(".", 1)[0]
    for index, packages in enumerate(LAYERS):
        if top in packages:
            return index
    return None


def module_name(path: Path, root: Path) -> str:
    """``flows/rollout.py`` -> ``flows.rollout``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module an ``from ... import`` names, its leading dots resolved."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not is_package:
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import of a project module in ``path``, at any depth (functions included)."""
    importer = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [_absolute(node, importer, is_package)]
        else:
            continue
        found += [Import(path, node.lineno, importer, name) for name in names
                  if layer_of(name) is not None]
    return found


def project_files(root: Path) -> list[Path]:
    """The Python files of every layer under ``root``."""
    return sorted(
        file for packages in LAYERS for package in packages
        for file in (root / package).rglob("*.py") if "__pycache__" not in file.parts
    )


def upward(imports: list[Import]) -> list[Import]:
    """The imports that reach a layer above the importer's own."""
    return [i for i in imports if layer_of(i.imported) < layer_of(i.importer)]


def describe(imports: list[Import], root: Path) -> str:
    """The layers, top to bottom, each with its modules and the lower layers it uses."""
    modules: dict[int, set[str]] = defaultdict(set)
    uses: dict[int, set[str]] = defaultdict(set)
    for file in project_files(root):
        modules[layer_of(module_name(file, root))].add(module_name(file, root))
    for i in imports:
        mine, theirs = layer_of(i.importer), layer_of(i.imported)
        if theirs > mine:
            uses[mine].add(i.imported.split(".", 1)[0])
    lines = ["Import layers, top to bottom (a layer may import from the layers below it):"]
    for index, packages in enumerate(LAYERS):
        below = ", ".join(sorted(uses[index])) or "nothing of the project"
        lines.append(f"  {index + 1}. {' / '.join(packages)}: {len(modules[index])} modules; "
                     f"imports {below}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the layers and every upward import; 1 when there is one."""
    root = Path(argv[0]).resolve() if argv else REPO_ROOT
    imports = [i for file in project_files(root) for i in imports_of(file, root)]
    print(describe(imports, root))
    wrong = upward(imports)
    for i in wrong:
        print(f"{i.file.relative_to(root)}:{i.line}: {i.importer} imports {i.imported} "
              f"({' / '.join(LAYERS[layer_of(i.importer)])} may not import "
              f"{' / '.join(LAYERS[layer_of(i.imported)])}, a layer above it)")
    print(f"{len(wrong)} upward import(s)" if wrong else "No upward import.")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
