"""Interrupted commands end cleanly.

`histopath` handles SIGTERM (what `kill`, Kubernetes and CI send) like Ctrl-C: a
`KeyboardInterrupt` in the main thread, so every `finally` and cleanup runs and nothing
half-written stays behind. `stop_children` ends the processes a command started (Beam's
worker processes), which would otherwise outlive it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised in the main thread like Ctrl-C's `KeyboardInterrupt`."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_children(timeout_s: float = 5.0) -> int:
    """Terminates every process this one started (recursively), killing those still alive
    after `timeout_s`.

    Returns:
      How many processes were stopped.
    """
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout_s)
    return len(children)
