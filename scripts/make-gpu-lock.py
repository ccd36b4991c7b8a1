#!/usr/bin/env python3
"""Writes requirements/lock-gpu.txt: requirements/lock.txt plus TensorFlow's CUDA wheels.

The CUDA variant of the lock is exactly the CPU lock's pins plus the `nvidia-*-cu12` wheels
that the lock's `tensorflow` declares for its `and-cuda` extra, and what those wheels
require in turn. pip reads the packages' metadata from the index (`pip install --dry-run
--report`, PEP 658 metadata: no wheel is downloaded):

    python3 scripts/make-gpu-lock.py          # or: make lock-gpu

Run it again whenever requirements/lock.txt changes (tests/test_gpu_image.py fails until
then). It is installed the same way as the lock (`pip install --no-deps
--ignore-requires-python -r requirements/lock-gpu.txt`); pipeline/docker/pipeline-gpu.Dockerfile
adds its CUDA wheels to the pipeline image.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
GPU_LOCK = REPO / "requirements" / "lock-gpu.txt"
EXTRA = "and-cuda"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")
HEADER = (
    "# The CUDA variant of requirements/lock.txt, written by scripts/make-gpu-lock.py (do not edit):\n"
    "# every pin of lock.txt, plus the nvidia-*-cu12 wheels of tensorflow[and-cuda] at the versions\n"
    "# the lock's tensorflow declares. Installed like the lock:\n"
    "#    pip install --no-deps --ignore-requires-python -r requirements/lock-gpu.txt\n"
)


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock file."""
    return {canonical(m.group(1)): m.group(3) for m in map(PIN.match, text.splitlines()) if m}


def _pip_report(requirements: list[str], no_deps: bool) -> list[dict]:
    """The `install` entries of `pip install --dry-run --report` (metadata only)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--ignore-requires-python", "--report", report, *requirements]
        if no_deps:
            command.insert(command.index("--quiet"), "--no-deps")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"make-gpu-lock: pip could not resolve {requirements}:\n{done.stderr[-2000:]}")
        with open(report, encoding="utf-8") as handle:
            return json.load(handle)["install"]


def extra_requirements(tensorflow_version: str) -> list[str]:
    """The requirements tensorflow==VERSION declares for its `and-cuda` extra."""
    (entry,) = _pip_report([f"tensorflow=={tensorflow_version}"], no_deps=True)
    found = []
    for requirement in entry["metadata"].get("requires_dist", []):
        text, _, marker = requirement.partition(";")
        if re.search(rf"extra\s*==\s*['\"]{EXTRA}['\"]", marker):
            found.append(text.replace(" ", ""))
    if not found:
        raise SystemExit(f"make-gpu-lock: tensorflow=={tensorflow_version} declares no '{EXTRA}' extra")
    return found


def resolve_gpu_pins(lock_text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, names that require it) for the CUDA wheels the lock lacks."""
    pins = lock_pins(lock_text)
    requirements = extra_requirements(pins["tensorflow"])
    resolved = _pip_report(requirements, no_deps=False)
    added: dict[str, tuple[str, list[str]]] = {}
    for entry in resolved:
        name = canonical(entry["metadata"]["name"])
        if name in pins:
            if pins[name] != entry["metadata"]["version"]:
                raise SystemExit(f"make-gpu-lock: {name} resolves to {entry['metadata']['version']} but "
                                 f"{LOCK} pins {pins[name]}")
            continue
        added[name] = (entry["metadata"]["version"], [])
    direct = {canonical(re.split(r"[=<>!~\[]", r)[0]) for r in requirements}
    for entry in resolved:
        parent = canonical(entry["metadata"]["name"])
        for requirement in entry["metadata"].get("requires_dist", []) or []:
            child = canonical(re.split(r"[\s;=<>!~\[(]", requirement)[0])
            if child in added:
                added[child][1].append(parent)
    for name in direct & set(added):
        added[name][1].append(f"tensorflow[{EXTRA}]")
    return added


def render(lock_text: str, added: dict[str, tuple[str, list[str]]]) -> str:
    """lock.txt's blocks (its header replaced) with a block per added pin, in name order."""
    lines = lock_text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if PIN.match(line))
    blocks: list[tuple[str, str]] = []
    for line in lines[first:]:
        match = PIN.match(line)
        if match:
            blocks.append((canonical(match.group(1)), line))
        else:
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + line)
    for name, (version, parents) in added.items():
        via = sorted(set(parents))
        text = f"{name}=={version}\n" + (f"    # via {via[0]}\n" if len(via) == 1 else
                                         "    # via\n" + "".join(f"    #   {p}\n" for p in via))
        blocks.append((name, text))
    blocks.sort(key=lambda block: block[0])
    return HEADER + "".join(text for _, text in blocks)


def main() -> int:
    lock_text = LOCK.read_text(encoding="utf-8")
    added = resolve_gpu_pins(lock_text)
    temporary = GPU_LOCK.with_suffix(".txt.tmp")
    temporary.write_text(render(lock_text, added), encoding="utf-8")
    temporary.replace(GPU_LOCK)
    print(f"wrote {GPU_LOCK.relative_to(REPO)}: {len(lock_pins(lock_text))} pins of lock.txt + {len(added)} "
          f"CUDA wheels ({', '.join(f'{n}=={v}' for n, (v, _) in sorted(added.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
