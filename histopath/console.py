"""A quiet terminal for long commands: one line per step on the terminal, everything else
(library logs, warnings, TensorFlow's C++ messages, Beam worker output) in log files.

    with Console(log_dir, verbose=False) as console:
        console.use_log("ingest")          # what follows goes to log_dir/ingest.log
        console.line("ingest: 585 images")  # shown on the terminal (and logged)

The redirection is at the file-descriptor level, so the output of child processes
started meanwhile (Beam's worker processes) lands in the current log file too. With
`verbose=True` nothing is redirected and every log record is shown.

Progress lines are log records of the `histopath.progress` logger (`progress_logger()`),
so a library emits them without knowing whether a console is active.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Optional, TextIO

PROGRESS_LOGGER = "histopath.progress"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def progress_logger() -> logging.Logger:
    """The logger whose INFO records are the terminal's progress lines."""
    return logging.getLogger(PROGRESS_LOGGER)


def elapsed(seconds: float) -> str:
    """`42.1 s`, `3 min 05 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class _TerminalHandler(logging.Handler):
    """Shows progress lines, and warnings and errors of our own code, on the terminal."""

    def __init__(self, stream: TextIO, verbose: bool):
        super().__init__(level=logging.DEBUG if verbose else logging.INFO)
        self.stream = stream
        self.verbose = verbose
        self.setFormatter(logging.Formatter(_LOG_FORMAT if verbose else "%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name == PROGRESS_LOGGER:
            return True
        return record.name.startswith("histopath") and record.levelno >= logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.name != PROGRESS_LOGGER and not self.verbose:
                message = f"{record.levelname.lower()}: {message}"
            self.stream.write(message + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001  (a broken terminal must not stop the run)
            self.handleError(record)


class Console:
    """Routes output for the duration of a command (a context manager).

    Args:
      log_dir: folder of the log files (created); None = no files (quiet mode then
        discards what it does not show).
      verbose: show everything, redirect nothing.
      first_log: name of the log file used until `use_log` switches (without `.log`).
    """

    def __init__(self, log_dir: Optional[str], verbose: bool = False, first_log: str = "main"):
        self.log_dir = log_dir
        self.verbose = verbose
        self.first_log = first_log
        self.current_log: Optional[str] = None
        self._saved_fds: list[int] = []
        self._terminal: Optional[TextIO] = None  # progress lines (the real stderr)
        self._output: Optional[TextIO] = None  # results (the real stdout)
        self._file_handler: Optional[logging.StreamHandler] = None
        self._handlers: list[logging.Handler] = []
        self._previous_level = logging.WARNING
        self._log_file: Optional[TextIO] = None
        self._started = time.monotonic()

    # ---- set-up and tear-down ------------------------------------------------------------
    def __enter__(self) -> "Console":
        root = logging.getLogger()
        self._previous_level = root.level
        root.setLevel(logging.INFO)
        if self.log_dir:
            if "://" in self.log_dir:
                raise ValueError(f"log files are written locally, not to {self.log_dir}")
            os.makedirs(self.log_dir, exist_ok=True)
        if self.verbose:
            self._terminal, self._output = sys.stderr, sys.stdout
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            self._saved_fds = [os.dup(1), os.dup(2)]
            self._terminal = os.fdopen(os.dup(self._saved_fds[1]), "w", encoding="utf-8", buffering=1)
            self._output = os.fdopen(os.dup(self._saved_fds[0]), "w", encoding="utf-8", buffering=1)
            logging.captureWarnings(True)
            warnings.simplefilter("default")
            # Child processes (Beam workers) read this to keep their warnings quiet too.
            os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
        terminal_handler = _TerminalHandler(self._terminal, self.verbose)
        self._handlers.append(terminal_handler)
        root.addHandler(terminal_handler)
        self._quiet_absl()
        self.use_log(self.first_log)
        return self

    def __exit__(self, *exc_info) -> None:
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
        root.setLevel(self._previous_level)
        if self._saved_fds:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self._saved_fds[0], 1)
            os.dup2(self._saved_fds[1], 2)
            for fd in self._saved_fds:
                os.close(fd)
            self._saved_fds = []
            logging.captureWarnings(False)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._terminal is not None and self._terminal is not sys.stderr:
            self._terminal.close()
        if self._output is not None and self._output is not sys.stdout:
            self._output.close()

    @staticmethod
    def _quiet_absl() -> None:
        """absl (TFX's logging) writes to stderr itself until absl.app runs: route it
        through Python logging only."""
        try:
            from absl import logging as absl_logging

            absl_logging.use_python_logging(quiet=True)
            absl_logging.set_verbosity(absl_logging.INFO)
        except ImportError:
            pass

    # ---- use ------------------------------------------------------------------------------
    def log_path(self, name: str) -> Optional[str]:
        """The file of log `name`, or None without a log folder."""
        return os.path.join(self.log_dir, f"{name}.log") if self.log_dir else None

    def use_log(self, name: str) -> None:
        """Sends what follows (log records, stdout and stderr of this process and of the
        processes it starts from now on) to `<log_dir>/<name>.log`."""
        if name == self.current_log:
            return
        self.current_log = name
        path = self.log_path(name)
        if path is None and self.verbose:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        stream = open(path or os.devnull, "a", encoding="utf-8", buffering=1)
        if not self.verbose:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
        root = logging.getLogger()
        if self._file_handler is not None:
            root.removeHandler(self._file_handler)
            self._handlers.remove(self._file_handler)
        self._file_handler = logging.StreamHandler(stream)
        self._file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        self._file_handler.setLevel(logging.DEBUG)
        root.addHandler(self._file_handler)
        self._handlers.append(self._file_handler)
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = stream

    def line(self, text: str) -> None:
        """One progress line on the terminal (and in the current log)."""
        progress_logger().info(text)

    def write(self, text: str) -> None:
        """A result for standard output (a final report), not a log record."""
        if self._output is not None:
            self._output.write(text if text.endswith("\n") else text + "\n")
            self._output.flush()

    @property
    def seconds(self) -> float:
        """Seconds since the console was entered."""
        return time.monotonic() - self._started
