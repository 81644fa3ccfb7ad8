"""Check that nml's imports point only down the layers of docs/architecture.md.

    python tools/check_layers.py        # prints each upward import; exit 1 if there is one

Layers, bottom to top (a module may import its own package and any package of a lower layer):

    0  nml (root modules: seeding, checksums, __init__)
    1  shards, noise, metrics            torch-free except metrics
    2  benchmark, data                   benchmark torch-free
    3  models
    4  features, callbacks
    5  cli
    6  study

Imports inside functions count too (a lazy import is still a dependency). Within a layer the
imports run one way as well: no two modules import each other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "nml"
LAYERS: dict[str, int] = {
    "": 0,
    "shards": 1,
    "noise": 1,
    "metrics": 1,
    "benchmark": 2,
    "data": 2,
    "models": 3,
    "features": 4,
    "callbacks": 4,
    "cli": 5,
    "study": 6,
}
TORCH_FREE = ("shards", "noise", "benchmark")


def package_of(module: str, root: Path = ROOT) -> str:
    """``nml.shards.spec`` -> ``shards``; ``nml.seeding`` / ``nml`` -> ``""`` (the root layer)."""
    parts = module.split(".")
    if len(parts) >= 2 and (root / parts[1]).is_dir():
        return parts[1]
    return ""


def imports_of(path: Path, root: Path = ROOT, runtime: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) of every ``nml`` import in a file, relative imports resolved
    (``runtime``: without those under ``if TYPE_CHECKING:``, which never run)."""
    tree = ast.parse(path.read_text(), str(path))
    module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    typing_only = set()
    if runtime:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "nml"]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = module.split(".")[
                    : -node.level if path.name != "__init__.py" else len(module.split("."))
                ]
                name = ".".join([*base, name] if name else base)
            if name.split(".")[0] == "nml":
                out.append((node.lineno, name))
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        mine = package_of(module, root)
        for line, target in imports_of(path, root):
            theirs = package_of(target, root)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                found.append(
                    f"{path.relative_to(root.parent)}:{line}: {mine or 'nml'} (layer {LAYERS[mine]}) imports "
                    f"{target} (layer {LAYERS[theirs]})"
                )
    return found


def _module_file(module: str, root: Path) -> str | None:
    """The ``nml`` module a dotted import names (``nml.cli.main``), if it is a file of ``root``."""
    rel = Path(*module.split(".")[1:])
    if (root / rel).with_suffix(".py").is_file():
        return module
    if (root / rel / "__init__.py").is_file():
        return f"{module}.__init__" if module != "nml" else None
    return None


def cycles(root: Path = ROOT) -> list[str]:
    """``a <-> b`` for every two modules that import each other (at module level or inside a
    function; a typing-only import does not run): within a layer the imports must run one way too."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        targets = set()
        for _, target in imports_of(path, root, runtime=True):
            found = _module_file(target, root) or _module_file(target.rpartition(".")[0], root)
            if found and found != module:
                targets.add(found)
        graph[module] = targets
    return sorted(f"{a} <-> {b}" for a, ts in graph.items() for b in ts if a < b and a in graph.get(b, ()))


def main() -> int:
    unknown = sorted(
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and p.name not in LAYERS and p.name not in ("configs", "__pycache__")
    )
    if unknown:
        print(f"packages with no layer in tools/check_layers.py: {unknown}", file=sys.stderr)
        return 1
    found = violations()
    for v in found:
        print(v)
    mutual = cycles()
    for c in mutual:
        print(f"modules that import each other: {c}")
    print(
        f"{len(found)} upward import(s), {len(mutual)} pair(s) of modules importing each other in {ROOT}",
        file=sys.stderr,
    )
    return 1 if found or mutual else 0


if __name__ == "__main__":
    sys.exit(main())
