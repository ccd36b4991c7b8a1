"""Progress of a local pipeline run, one line per component, from TFX's own records.

`LocalDagRunner` runs one component at a time and logs (through absl) when each starts
and finishes, and its launcher when it reuses a cached execution. `ComponentProgress`, a
logging handler, turns those records into lines on the terminal (`histopath.console`),
switches the log file to `logs/<component>.log` at each start, and shows the last epoch
of each training phase (`models.training`; every epoch is in the log) indented under its
component: one line per phase of each fit, not one per epoch. A Trainer that
cross-validates adds a line per fold (`models.cross_validation`), with the time the folds
left will take at the pace so far, since a default run's folds take most of an hour.

    ▸ trainer_mil
        train epoch 6/6  loss 0.339  auc 0.998  val_loss 0.199  val_auc 1.000  lr 5e-04
        fold 1/5 done after 2 min 10 s; the 4 left take about 8 min 40 s
        ...
    ✓ trainer_mil  7.4 s
    · StatisticsGen  cached
"""

from __future__ import annotations

import logging
import re
import time
from typing import Optional

from histopath.console import Console, elapsed, progress_logger

_RUNNING = "Component %s is running."
_FINISHED = "Component %s is finished."
_CACHED = "A cached execution %d is used."
_EPOCH = re.compile(r"\[(?P<phase>[a-z_]+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+) (?P<metrics>.*) lr=(?P<lr>\S+)")
_SHOWN_METRICS = ("loss", "auc", "val_loss", "val_auc")
_FOLD = re.compile(r"fold (?P<fold>\d+)/(?P<folds>\d+): ")
TRAINING_LOGGER = "histopath.models.training"
CROSS_VALIDATION_LOGGER = "histopath.models.cross_validation"


def epoch_line(message: str) -> Optional[tuple[str, int, str]]:
    """`[head] epoch 2/10 auc=0.81 loss=0.52 ... lr=1e-03` -> (phase, epoch, a short
    progress line); None for other messages."""
    match = _EPOCH.match(message)
    if not match:
        return None
    values = dict(item.split("=", 1) for item in match["metrics"].split() if "=" in item)
    shown = "  ".join(f"{name} {float(values[name]):.3f}" for name in _SHOWN_METRICS if name in values)
    line = f"    {match['phase']} epoch {match['epoch']}/{match['epochs']}  {shown}  lr {float(match['lr']):.0e}"
    return match["phase"], int(match["epoch"]), line


class ComponentProgress(logging.Handler):
    """Turns TFX's component records into progress lines and per-component log files.

    Args:
      console: the active console (its log folder gets one file per component).
    """

    def __init__(self, console: Console):
        super().__init__(level=logging.INFO)
        self.console = console
        self.current: Optional[str] = None
        self.started = 0.0
        self.cached = False
        self.finished: dict[str, str] = {}  # component -> "complete" | "cached"
        self.last_epoch: Optional[tuple[str, int, str]] = None  # of the phase running, not shown yet

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.msg == _RUNNING and record.args:
                self._start(str(record.args[0]))
            elif record.msg == _CACHED:
                self.cached = True
            elif record.msg == _FINISHED and record.args:
                self._finish(str(record.args[0]))
            elif record.name == TRAINING_LOGGER:
                epoch = epoch_line(record.getMessage())
                if epoch:
                    self._epoch(*epoch)
            elif record.name == CROSS_VALIDATION_LOGGER:
                fold = _FOLD.match(record.getMessage())
                if fold:
                    self._fold(int(fold["fold"]), int(fold["folds"]))
        except Exception:  # noqa: BLE001  (progress must never break the run)
            self.handleError(record)

    def _start(self, component: str) -> None:
        self.current, self.started, self.cached = component, time.monotonic(), False
        self.console.use_log(component)
        if component.startswith("trainer_"):  # epoch lines follow
            progress_logger().info(f"  ▸ {component}")

    def _epoch(self, phase: str, number: int, line: str) -> None:
        """Holds an epoch's line; shows the one before when this one starts another phase
        or another fit (its number does not follow)."""
        if self.last_epoch is not None and (self.last_epoch[0] != phase or number <= self.last_epoch[1]):
            progress_logger().info(self.last_epoch[2])
        self.last_epoch = (phase, number, line)

    def _fold(self, number: int, folds: int) -> None:
        """A fold's line: how long the folds so far took, and the rest at that pace."""
        self._show_last_epoch()
        seconds = time.monotonic() - self.started
        line = f"    fold {number}/{folds} done after {elapsed(seconds)}"
        if number < folds:
            line += f"; the {folds - number} left take about {elapsed(seconds / number * (folds - number))}"
        progress_logger().info(line)

    def _show_last_epoch(self) -> None:
        if self.last_epoch is not None:
            progress_logger().info(self.last_epoch[2])
            self.last_epoch = None

    def _finish(self, component: str) -> None:
        self._show_last_epoch()
        seconds = time.monotonic() - self.started
        if self.cached:
            progress_logger().info(f"  · {component:32s} cached")
        else:
            progress_logger().info(f"  ✓ {component:32s} {elapsed(seconds)}")
        self.finished[component] = "cached" if self.cached else "complete"
        self.current = None

    def failed(self, error: BaseException) -> None:
        """Reports the component that was running when the run failed."""
        if self.current is None:
            return
        self._show_last_epoch()
        log = self.console.log_path(self.current)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
        progress_logger().info(f"  ✗ {self.current:32s} failed after {elapsed(time.monotonic() - self.started)}: "
                               f"{first_line}" + (f" (log: {log})" if log else ""))


def attach(console: Console) -> ComponentProgress:
    """Installs a `ComponentProgress` on the loggers TFX and the Trainers use."""
    handler = ComponentProgress(console)
    logging.getLogger().addHandler(handler)
    return handler


def detach(handler: ComponentProgress) -> None:
    logging.getLogger().removeHandler(handler)
