"""Code fingerprints, so that pipeline caching notices every change of the code a node runs.

Components name their user code by module path (no per-folder wheel), so TFX's cache key
would not see an edit. Each component's `custom_config` carries a hash of the source of
every module it can run: its entry modules and, transitively, every module of the package
they import (at the top or inside a function), found by reading the imports. Editing one
model kind's code re-runs that kind's Trainer only; editing shared code re-runs all that
use it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import pathlib
from typing import Iterable

from histopath.models import registry

PACKAGE = "histopath"
TRANSFORM_ENTRY = ("histopath.models.preprocessing",)
TRAINER_ENTRY = ("histopath.components.trainer",)


def _source(name: str) -> pathlib.Path | None:
    """The source file of module `name`; None when `name` is not a module (an attribute)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return pathlib.Path(spec.origin)


def _imported_names(path: pathlib.Path, module: str) -> set[str]:
    """Every module name an import in `path` may refer to (`from a import b`: a and a.b)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def module_closure(entries: Iterable[str], package: str = PACKAGE) -> dict[str, pathlib.Path]:
    """The entry modules and every module of `package` they import, transitively.

    Returns:
      module name -> its source file.

    Raises:
      ImportError: an entry module cannot be found.
    """
    found: dict[str, pathlib.Path] = {}
    pending = list(entries)
    for name in pending:
        if _source(name) is None:
            raise ImportError(f"cannot find module {name}")
    while pending:
        name = pending.pop()
        path = _source(name)
        if name in found or path is None:
            continue
        found[name] = path
        pending += [imported for imported in _imported_names(path, name)
                    if (imported == package or imported.startswith(package + ".")) and imported not in found]
    return found


def source_fingerprint(entries: Iterable[str], package: str = PACKAGE) -> str:
    """sha256 over the source of `module_closure(entries)` (order-independent)."""
    digest = hashlib.sha256()
    for name, path in sorted(module_closure(entries, package).items()):
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def trainer_entries(kind: str) -> tuple[str, ...]:
    """What a Trainer of `kind` runs: the run_fn and the kind's module (imported by name)."""
    return TRAINER_ENTRY + (registry.get(kind).module_name,)
