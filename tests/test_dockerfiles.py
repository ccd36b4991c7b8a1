"""Static checks of the container recipes (no Docker needed).

The images themselves are built and run by scripts/docker-smoke.sh (`-m docker`); here:
COPY sources exist and are not excluded by .dockerignore, base-image ARG defaults are the
pinned ones, the web app runs as non-root with HEALTHCHECK/EXPOSE and a command the CLI
accepts, and requirements/webapp.txt is a complete pinned subset of the lock covering every
third-party module the web app imports.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import pathlib
import re
import shlex
import subprocess
import sys
from typing import NamedTuple

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from histopath import cli as histopath_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
WEBAPP = REPO / "serving" / "docker" / "webapp.Dockerfile"
TFSERVING = REPO / "serving" / "docker" / "tfserving.Dockerfile"
PIPELINE = REPO / "pipeline" / "docker" / "pipeline.Dockerfile"
PIPELINE_TFX = REPO / "pipeline" / "docker" / "tfx.Dockerfile"
WEBAPP_REQUIREMENTS = REPO / "requirements" / "webapp.txt"
LOCK = REPO / "requirements" / "lock.txt"
# The web app image's distribution that stands in for the lock's `tensorflow`.
DISTRIBUTION_ALIASES = {"tensorflow-cpu": "tensorflow"}


class Instruction(NamedTuple):
    keyword: str  # upper-case, e.g. "COPY"
    arguments: str  # the rest of the (joined) line
    stage: int  # index of the FROM stage it belongs to


def parse_dockerfile(path: pathlib.Path) -> list[Instruction]:
    """Splits a Dockerfile into instructions (comments dropped, continuations joined)."""
    instructions, pending, stage = [], "", -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        keyword, _, arguments = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults[name.strip()] = value.strip()
    return defaults


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Sources of COPY/ADD from the build context (not `--from=<stage>`)."""
    sources = []
    for instruction in instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(instruction.arguments)
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources += paths[:-1]
    return sources


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(instruction.stage for instruction in instructions)
    return [instruction for instruction in instructions if instruction.stage == last]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's matching for the patterns used here (no `!` exceptions)."""
    assert not any(p.startswith("!") for p in patterns), "update is_ignored for ! patterns"
    parts = pathlib.PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatch(part, tail) for part in parts) or any(
                fnmatch.fnmatch(p, tail) for p in prefixes
            ):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


@pytest.fixture(scope="module")
def webapp() -> list[Instruction]:
    return parse_dockerfile(WEBAPP)


# --- recipes ----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [WEBAPP, PIPELINE, PIPELINE_TFX], ids=["webapp", "pipeline", "pipeline-tfx"])
def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    patterns = dockerignore_patterns()
    sources = copy_sources(parse_dockerfile(dockerfile))
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"{dockerfile.name}: COPY {source} does not exist"
        assert not is_ignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"
        if source == ".":  # the whole context: what setup.py installs must be in it
            import re

            folders = re.findall(r'"(\w+)": "histopath\.\w+"', (REPO / "setup.py").read_text()) + ["histopath"]
            modules = [m for folder in folders for m in (REPO / folder).rglob("*.py")
                       if not m.name.endswith("_test.py") and m.name != "conftest.py"]
            assert modules
            for module in modules:
                relative = module.relative_to(REPO).as_posix()
                assert "__pycache__" in relative or not is_ignored(relative, patterns), f"{relative} is excluded"
        elif path.is_dir():  # the Python files inside (but tests) must reach the image too
            for module in path.rglob("*.py"):
                relative = module.relative_to(REPO).as_posix()
                if "__pycache__" not in relative and not module.name.endswith("_test.py") \
                        and module.name != "conftest.py":
                    assert not is_ignored(relative, patterns), f"{relative} is excluded"


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", ".venv/bin/python", "test-artifacts", "demo/outputs",
                 "serving/__pycache__", "x/model/1/saved_model.pb", ".env"):
        assert is_ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("setup.py", "README.md", "serving/webapp/templates/predictions/index.html",
                 "requirements/webapp.txt", "serving/webapp/predictions/migrations/0001_initial.py"):
        assert not is_ignored(path, patterns), f"{path} is needed by a build"


@pytest.mark.parametrize(
    ("dockerfile", "arg", "default"),
    [
        (WEBAPP, "BASE_IMAGE", "python:3.11-slim"),
        (TFSERVING, "TF_SERVING_IMAGE", "tensorflow/serving:2.16.1"),
        (PIPELINE, "BASE_IMAGE", "python:3.11-slim"),
        (PIPELINE_TFX, "BASE_IMAGE", "gcr.io/tfx-oss-public/tfx:1.16.0"),
    ],
    ids=["webapp", "tfserving", "pipeline", "pipeline-tfx"],
)
def test_base_images_are_pinned_build_args(dockerfile, arg, default):
    instructions = parse_dockerfile(dockerfile)
    assert instructions[0].keyword == "ARG", "the base-image ARG must come before FROM"
    assert arg_defaults(instructions)[arg] == default
    froms = [i.arguments.split() for i in instructions if i.keyword == "FROM"]
    stages = {words[2] for words in froms if len(words) == 3 and words[1].upper() == "AS"}
    for words in froms:  # the base ARG, or an earlier stage of the same file
        assert words[0] == f"${{{arg}}}" or words[0] in stages, f"FROM {words[0]} bypasses ${{{arg}}}"
    assert froms[0][0] == f"${{{arg}}}"


def test_tf_serving_version_matches_the_lock_and_the_manifests():
    lock = _pins(LOCK)
    serving_version = lock["tensorflow-serving-api"]
    assert arg_defaults(parse_dockerfile(TFSERVING))["TF_SERVING_IMAGE"].endswith(f":{serving_version}")
    for manifest in ("tfserving-deployment.yaml", "kustomization.yaml", "kserve-inferenceservice.yaml"):
        assert serving_version in (REPO / "serving" / "k8s" / manifest).read_text(), manifest


def test_webapp_image_runs_non_root_with_healthcheck_and_port(webapp):
    runtime = final_stage(webapp)
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the web app must not run as root"
    assert any(i.keyword == "HEALTHCHECK" and "/healthz" in i.arguments for i in runtime)
    assert any(i.keyword == "EXPOSE" and i.arguments.split() == ["8000"] for i in runtime)
    # Only the virtualenv and the project's wheel cross from the build stages: no sources.
    copies = [i.arguments for i in runtime if i.keyword == "COPY"]
    assert copies == ["--from=deps /opt/venv /opt/venv", "--from=wheel /wheels/ /tmp/wheels/"]


def test_webapp_image_installs_pinned_requirements_and_the_project_without_deps(webapp):
    runs = " ".join(i.arguments for i in webapp if i.keyword == "RUN")
    assert "pip install --no-deps -r /tmp/requirements/webapp.txt" in runs
    assert "pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ." in runs
    assert "pip install --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl" in runs
    assert "requirements/webapp.txt" in copy_sources(webapp)


def test_webapp_command_is_accepted_by_the_cli(webapp):
    """The CMD's `histopath serve` flags exist (parsed by the real CLI parser)."""
    from histopath.cli import build_parser

    command = [i.arguments for i in final_stage(webapp) if i.keyword == "CMD"][-1]
    shell_line = ast.literal_eval(command)[-1]  # ["sh", "-c", "exec histopath serve ..."]
    env = {"PORT": "8000", "WEB_CONCURRENCY": "1"}
    words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], shell_line))
    assert words[:3] == ["exec", "histopath", "serve"]
    args = build_parser().parse_args(words[2:])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 8000, 1)


def test_webapp_documents_the_environment_the_app_reads(webapp):
    header = WEBAPP.read_text()
    readers = "".join((REPO / p).read_text() for p in ("serving/webapp/settings.py", "serving/cli.py"))
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "DEBUG", "HISTOPATH_SERVING_DIR",
                 "HISTOPATH_MODEL_NAME", "TF_SERVING_URL", "HISTOPATH_STATE_DIR"):
        assert re.search(rf"^#\s+{name}\s", header, re.M), f"{name} is not documented"
        assert name in readers, f"the web app does not read {name}"
    env = " ".join(i.arguments for i in final_stage(webapp) if i.keyword == "ENV")
    assert "SECRET_KEY" not in env, "never bake a secret into the image"


def test_tfserving_recipe_bakes_the_model_folder():
    instructions = parse_dockerfile(TFSERVING)
    assert arg_defaults(instructions)["MODEL_NAME"] == "histopath"
    assert copy_sources(instructions) == ["${MODEL_NAME}/"]
    copy = next(i for i in instructions if i.keyword == "COPY")
    assert copy.arguments.split()[-1] == "/models/${MODEL_NAME}/"
    env = " ".join(i.arguments for i in instructions if i.keyword == "ENV")
    assert "MODEL_NAME=${MODEL_NAME}" in env and "MODEL_BASE_PATH=/models" in env
    assert any(i.keyword == "EXPOSE" and i.arguments.split() == ["8500", "8501"] for i in instructions)
    users = [i.arguments for i in instructions if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "NOT BUILT" in TFSERVING.read_text(), "say why it is not built here"


def test_pipeline_image_installs_the_lock_then_the_project():
    instructions = parse_dockerfile(PIPELINE)
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "--no-deps --ignore-requires-python" in runs and "requirements/image.txt" in runs  # the lock, as .venv
    assert "pip install --no-deps --no-build-isolation /histopath-src" in runs
    assert "import importlib, pkgutil, histopath" in runs  # every module imports in the image
    assert {"requirements/lock.txt", "."} <= set(copy_sources(instructions))


def test_tfx_pipeline_image_installs_the_project_over_tfx():
    instructions = parse_dockerfile(PIPELINE_TFX)
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "pip install --no-deps /histopath-src" in runs, "must not replace TFX's own dependencies"
    assert "import histopath" in runs and "." in set(copy_sources(instructions))


def test_the_web_image_copies_every_package_folder_of_setup_py():
    import re

    folders = re.findall(r'"(\w+)": "histopath\.\w+"', (REPO / "setup.py").read_text())
    copied = set(copy_sources(parse_dockerfile(WEBAPP)))
    assert {f"{folder}/" for folder in folders} | {"histopath/"} <= copied


@pytest.mark.parametrize(
    "script",
    ["scripts/docker-smoke.sh", "scripts/make-base-image.sh", "serving/docker/build-tfserving-image.sh",
     "scripts/build-pipeline-image.sh", "scripts/kfp-local-run.sh"],
)
def test_shell_scripts_parse(script):
    path = REPO / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in path.read_text()


# --- requirements/webapp.txt ------------------------------------------------------------


def _pins(path: pathlib.Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(3)
    return pins


def test_webapp_requirements_are_the_locks_versions():
    lock, webapp_pins = _pins(LOCK), _pins(WEBAPP_REQUIREMENTS)
    assert len(webapp_pins) > 20
    for name, version in webapp_pins.items():
        locked_name = DISTRIBUTION_ALIASES.get(name, name)
        assert locked_name in lock, f"{name} is not in the lock"
        assert lock[locked_name] == version, f"{name}=={version} but the lock has {lock[locked_name]}"
    for heavy in ("tfx", "apache-beam", "kserve", "tensorflow-transform", "tensorflow", "kfp"):
        assert heavy not in webapp_pins, f"{heavy} does not belong in the web app image"


def test_webapp_requirements_are_a_complete_closure():
    """Installed with --no-deps, so every dependency of every pin must be listed too."""
    webapp_pins = _pins(WEBAPP_REQUIREMENTS)
    provided = set(webapp_pins) | {DISTRIBUTION_ALIASES.get(n, n) for n in webapp_pins}
    environment = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    missing = []
    for name in webapp_pins:
        metadata_name = DISTRIBUTION_ALIASES.get(name, name)  # the venv holds `tensorflow`
        for requirement_text in importlib.metadata.requires(metadata_name) or []:
            requirement = Requirement(requirement_text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in provided:
                missing.append(f"{requirement.name} (needed by {name})")
    assert not missing, f"add to requirements/webapp.txt: {sorted(set(missing))}"


def _imports(path: pathlib.Path, top_level_only: bool, run_functions: tuple[str, ...] = ()) -> set[str]:
    """Imports of a module: all of them, or those at module level and in `run_functions`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = list(ast.walk(tree))
    if top_level_only:
        nodes = tree.body + [inner for node in tree.body
                             if isinstance(node, ast.FunctionDef) and node.name in run_functions
                             for inner in ast.walk(node)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


# Folder of each histopath sub-package (as in setup.py).
PACKAGE_DIRS = {"histopath": "histopath", "histopath.data": "data", "histopath.models": "models",
                "histopath.evaluation": "evaluation", "histopath.components": "components",
                "histopath.pipeline": "pipeline", "histopath.serving": "serving"}
# Imports the web app never executes: (module, imported name) -> why.
NOT_IN_WEBAPP = {
    ("histopath.serving.model_store", "tensorflow_serving"): "metadata for `histopath model-server`",
    ("histopath.serving.cli", "histopath.serving.model_server"): "`histopath model-server` handler",
    ("histopath", "histopath.components"): "artifact types looked up by TFX's Kubeflow entrypoint",
}


def _module_file(module: str) -> pathlib.Path | None:
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
        if module == package or module.startswith(package + "."):
            rest = module[len(package):].lstrip(".").replace(".", "/")
            base = REPO / folder / rest if rest else REPO / folder
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def test_webapp_requirements_cover_what_the_web_app_imports():
    """Follows imports from the web app and the CLI; third-party ones must be pinned."""
    webapp_dir = REPO / "serving" / "webapp"
    if not webapp_dir.is_dir():
        pytest.skip("the web app is not written yet")
    # (module, follow function-level imports too): the CLI modules of every area are imported
    # to build the parser, so their module-level imports and their `register()` run.
    todo = [(f"histopath.serving.webapp.{p.relative_to(webapp_dir).with_suffix('').as_posix().replace('/', '.')}"
             .replace(".__init__", ""), True) for p in webapp_dir.rglob("*.py")]
    todo += [("histopath.cli", False), ("histopath.serving.cli", True)]
    todo += [(module, False) for module in histopath_cli.COMMAND_MODULES]
    seen, third_party = set(), {}
    while todo:
        module, deep = todo.pop()
        if (module, deep) in seen:
            continue
        seen.add((module, deep))
        path = _module_file(module)
        if path is None:
            continue
        for name in _imports(path, top_level_only=not deep, run_functions=("register",)):
            if any(module == m and (name == n or name.startswith(n + ".")) for m, n in NOT_IN_WEBAPP):
                continue
            root = name.split(".")[0]
            if root == "histopath":
                if _module_file(name):
                    todo.append((name, True))
            elif root not in sys.stdlib_module_names and root != "__future__":
                third_party.setdefault(root, module)
    distributions = importlib.metadata.packages_distributions()
    webapp_pins = _pins(WEBAPP_REQUIREMENTS)
    provided = set(webapp_pins) | {DISTRIBUTION_ALIASES.get(n, n) for n in webapp_pins}
    uncovered = []
    for root, importer in sorted(third_party.items()):
        owners = {canonicalize_name(d) for d in distributions.get(root, [])}
        if not owners & provided:
            uncovered.append(f"{root} (imported by {importer}; from {sorted(owners) or '?'})")
    assert not uncovered, f"the web app imports modules not in requirements/webapp.txt: {uncovered}"
    assert {"django", "tensorflow", "PIL", "numpy"} <= set(third_party)


# --- the real thing (opt-in) --------------------------------------------------------------


@pytest.mark.docker
def test_docker_smoke_script(request):
    """Runs scripts/docker-smoke.sh (minutes). Only with `pytest -m docker`."""
    if "docker" not in (request.config.getoption("-m") or ""):
        pytest.skip("builds and runs the web app image: select with -m docker")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine")
    result = subprocess.run(["bash", str(REPO / "scripts" / "docker-smoke.sh")],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "docker-smoke: OK" in result.stdout
    assert re.search(r"label=(Benign|Malignant) probability_of_malignancy=[0-9.]+%", result.stdout)
