"""Helpers shared by the benchmarks: process-tree memory sampling, atomic JSON, text and
figure output, results cached by what made them, and the CPU's name."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import platform
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple


class TreeRssSampler:
    """Samples the RSS of this process and all its descendants (e.g. Beam workers).

    `getrusage(RUSAGE_CHILDREN).ru_maxrss` is not usable for the children: Linux carries
    the parent's high-water RSS into every child that forks and execs, so it reports this
    process's own peak. The sum of RSS over the tree counts shared pages once per process,
    so it is an upper bound of the memory the run needs.

    Args:
      interval: seconds between samples.
    """

    def __init__(self, interval: float = 0.5):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_tree_bytes = 0
        self.peak_processes = 0
        self.peak_children_bytes = 0  # descendants only: what a sub-command needed

    def _sample(self) -> None:
        import psutil

        own, children, processes = 0, 0, [self._process]
        try:
            processes += self._process.children(recursive=True)
        except psutil.Error:
            pass
        for process in processes:
            try:
                rss = process.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                continue
            if process is self._process:
                own = rss
            else:
                children += rss
        if own + children > self.peak_tree_bytes:
            self.peak_tree_bytes, self.peak_processes = own + children, len(processes)
        self.peak_children_bytes = max(self.peak_children_bytes, children)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "TreeRssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def as_dict(self) -> Dict[str, Any]:
        return {"peak_mib": round(self.peak_tree_bytes / 2**20, 1), "processes_at_peak": self.peak_processes,
                "peak_children_mib": round(self.peak_children_bytes / 2**20, 1),
                "interval_seconds": self._interval}


def write_text(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` under a temporary name, then renames it (never half-written)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: pathlib.Path, data: Dict[str, Any]) -> None:
    """Writes `data` as indented JSON (`write_text`)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def content_key(parts: Mapping[str, Any], length: int = 16) -> str:
    """A short SHA-256 of `parts` as sorted JSON: names a result by everything it depends on.

    Args:
        parts: the settings, folds, seed, ... the result was made from (`str()` for values
            JSON cannot hold).
        length: hex digits kept.
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cached_json(path: Optional[pathlib.Path],
                compute: Callable[[], Dict[str, Any]]) -> Tuple[Dict[str, Any], bool]:
    """`compute()`'s result, read back from `path` when a run before this one wrote it.

    Args:
        path: the JSON file that keeps the result (written with `write_json`, so an interrupted
            run never leaves half a file); None computes and keeps nothing.
        compute: makes the result when it is not kept yet.

    Returns:
        The result, and whether it came from `path`.
    """
    if path is not None and path.exists():
        return json.loads(path.read_text()), True
    result = compute()
    if path is not None:
        write_json(path, result)
    return result, False


def save_figure(figure, path: pathlib.Path, dpi: int) -> None:
    """Saves a Matplotlib figure under a temporary name, renames it into place, closes it."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    figure.savefig(tmp, dpi=dpi)
    plt.close(figure)
    tmp.replace(path)


def latest_artifact_dir(pattern: str | os.PathLike) -> pathlib.Path:
    """The artifact folder with the highest numeric execution id matching a glob pattern."""
    matches = [pathlib.Path(p) for p in glob.glob(os.fspath(pattern))]
    if not matches:
        raise FileNotFoundError(f"no artifact folder matches {pattern}")
    return max(matches, key=lambda p: int(p.name) if p.name.isdigit() else -1)


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo when there is one)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
