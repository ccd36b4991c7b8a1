"""The layering rule, read from the real imports of every product module.

The folders at the top of the repository are installed as `histopath.<folder>`
(`setup.py`: `models/` is `histopath.models`). Layers point one way; a module may import
its own layer and the ones below it, never one above:

    0  histopath/                                   ground: CLI plumbing, files, images, slides
    1  data/, evaluation's measures                 layouts and records; metrics, bootstrap, rules
    2  models/                                      image ops, model kinds, training, export
    3  components/, the rest of evaluation/         TFX components; evaluate and predict
    4  pipeline/, serving/                          the DAG and its runners; the servers

`evaluation`'s measures (metrics, bootstrap, operating point, patient rules, scoring,
slide context, plots, slide calling) import nothing above `data/`: the training code in `models/` scores
its folds with them, and `evaluate` / `predict` sit above `models/`.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"histopath": 0, "data": 1, "models": 2, "components": 3, "evaluation": 3, "pipeline": 4, "serving": 4}
MEASURES = {"metrics", "bootstrap", "operating_point", "patient_rules", "scoring", "slide_context", "plots",
            "slide_calling"}


def _layer(module: str) -> int:
    """The layer of `histopath.<folder>[.<name>...]`."""
    parts = module.split(".")
    folder = parts[1] if len(parts) > 1 and parts[1] in FOLDERS else "histopath"
    if folder == "evaluation" and len(parts) > 2 and parts[2] in MEASURES:
        return 1
    return FOLDERS[folder]


def _product_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name.endswith("_test.py") or path.name in ("conftest.py",) or "migrations" in path.parts:
                continue
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            prefix = ["histopath"] if folder == "histopath" else ["histopath", folder]
            modules[".".join(prefix + parts)] = path
    return modules


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:  # `from package import module` names the module
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
    return {name for name in found if name.startswith("histopath.")}


MODULES = _product_modules()
# The one import that points up, on purpose: TFX's Kubeflow entrypoint imports an
# artifact class by the type name it was compiled with, from the package root (lazily).
EXCEPTIONS = {("histopath", "histopath.components.artifacts")}


def test_the_folders_are_the_packages_setup_installs():
    setup = (ROOT / "setup.py").read_text()
    for folder in FOLDERS:
        assert folder == "histopath" or f'"{folder}": "histopath.{folder}"' in setup
    assert "histopath.models.registry" in MODULES and "histopath.data.split" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
    own = _layer(module)
    above = sorted(name for name in _imports(MODULES[module])
                   if _layer(name) > own and (module, name) not in EXCEPTIONS)
    assert not above, f"{module} (layer {own}) imports {above}"
