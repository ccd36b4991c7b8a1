"""What one piece of work cost: wall time, CPU time and peak resident memory.

The Trainer measures its training with `ResourceMonitor` and records the result in
`model_info["training_resources"]`, which the run report shows per candidate. The peak is
sampled (a background thread sums the RSS of this process and its children, since the
Trainer fits each fold in a child process), because `getrusage`'s `ru_maxrss` is one
process's high-water mark since it started: under TFX's local runner the Trainer shares
its process with the components before it.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class ResourceMonitor:
    """Context manager measuring wall time, CPU time and the peak RSS of this process and
    its child processes (the folds `models.isolation` runs).

    The CPU time counts children that ended (and were waited for) within the block; the
    peak is the highest sum of the RSS of this process and its live descendants.

    Args:
      interval: seconds between RSS samples.

    Example:
      with ResourceMonitor() as monitor:
          train()
      model_info["training_resources"] = monitor.summary()
    """

    def __init__(self, interval: float = 0.25):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_rss_bytes = 0
        self.peak_rss_bytes = 0
        self.peak_children = 0
        self.end_rss_bytes = 0
        self.wall_seconds = 0.0
        self.cpu_seconds = 0.0
        self._started = 0.0
        self._cpu_started = 0.0

    def _sample(self) -> int:
        import psutil

        rss, children = self._process.memory_info().rss, 0
        for child in self._process.children(recursive=True):
            try:
                rss += child.memory_info().rss
                children += 1
            except psutil.Error:  # ended between the listing and the reading
                pass
        if rss > self.peak_rss_bytes:
            self.peak_rss_bytes, self.peak_children = rss, children
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> "ResourceMonitor":
        self.start_rss_bytes = self._sample()
        self._started, self._cpu_started = time.perf_counter(), self._cpu_time()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.end_rss_bytes = self._sample()
        self.wall_seconds = time.perf_counter() - self._started
        self.cpu_seconds = self._cpu_time() - self._cpu_started

    def _cpu_time(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def summary(self) -> dict[str, float | int]:
        """`wall_seconds`, `cpu_seconds`, `start_`/`peak_`/`end_rss_bytes` and
        `processes_at_peak` (this one and its children)."""
        return {"wall_seconds": round(self.wall_seconds, 1), "cpu_seconds": round(self.cpu_seconds, 1),
                "start_rss_bytes": int(self.start_rss_bytes), "peak_rss_bytes": int(self.peak_rss_bytes),
                "end_rss_bytes": int(self.end_rss_bytes), "processes_at_peak": 1 + self.peak_children}
