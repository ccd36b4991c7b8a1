"""Run one function in a fresh child process and return its result.

TensorFlow and Keras keep memory from every model a process has fitted: clearing Keras'
session and collecting garbage do not give it back (keras-team/tf-keras#286), so a
Trainer that fits one model per fold grows by a model's worth of memory per fit. A fold
fitted in its own process gives everything back when the process ends.

The child is started with the "spawn" method (a fresh interpreter: no TensorFlow state,
threads or Beam workers inherited from the parent), so `function` and its arguments must
be picklable (module-level functions, dataclasses, numpy arrays). Its output goes to the
parent's file descriptors, so the pipeline's log files get it.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, TypeVar

_Result = TypeVar("_Result")


def run_in_child(function: Callable[..., _Result], *args: Any, **kwargs: Any) -> _Result:
    """`function(*args, **kwargs)` in a new process; its return value (or its exception)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()
