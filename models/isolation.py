"""Run one function in a fresh child process and return its result.

TensorFlow and Keras keep memory from every model a process has fitted: clearing Keras'
session and collecting garbage do not give it back (keras-team/tf-keras#286), so a
Trainer that fits one model per fold grows by a model's worth of memory per fit. A fold
fitted in its own process gives everything back when the process ends.

The child is started with the "spawn" method (a fresh interpreter: no TensorFlow state,
threads or Beam workers inherited from the parent), so `function` and its arguments must
be picklable (module-level functions, dataclasses, numpy arrays). Its output goes to the
parent's file descriptors, so the pipeline's log files get it, and the records of our own
loggers (`histopath.*`, the progress lines among them) are handed to the parent's
loggers, so the terminal shows the child's progress as the parent's.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import traceback
from typing import Any, Callable, TypeVar

from histopath.interrupts import terminate_as_interrupt

_Result = TypeVar("_Result")
OWN_LOGGER = "histopath"  # the child's records of this logger and below go to the parent


def run_in_child(function: Callable[..., _Result], *args: Any, **kwargs: Any) -> _Result:
    """`function(*args, **kwargs)` in a new process; its return value (or its exception).

    An interrupt while waiting (Ctrl-C, or SIGTERM under `interrupts.terminate_as_interrupt`)
    ends the child at once and is raised again, so a stopped run does not wait for a fit;
    the child handles that SIGTERM the same way, so its own children end too.

    Raises:
      ChildProcessError: the child died without answering (e.g. killed for memory).
      Whatever `function` raised, with the child's traceback as a note.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    records = context.Queue()
    child = context.Process(target=_answer, args=(sender, records, function, args, kwargs), name=_name(function))
    relay = logging.handlers.QueueListener(records, _ToParentLoggers())
    relay.start()
    child.start()
    sender.close()
    try:
        succeeded, value, child_traceback = receiver.recv()
        child.join()
    except EOFError:
        child.join()
        raise ChildProcessError(f"the process running {_name(function)} ended (exit code {child.exitcode}) "
                                "without answering") from None
    except BaseException:
        child.terminate()
        child.join()
        raise
    finally:
        receiver.close()
        relay.stop()  # after the child ended: its last records are in the queue by then
        records.close()
    if succeeded:
        return value
    value.add_note(f"in the child process running {_name(function)}:\n{child_traceback}")
    raise value


class _ToParentLoggers(logging.Handler):
    """The parent's side of the log relay: each child record goes to the parent's logger
    of the same name, as if it had been logged here."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _answer(sender: Any, records: Any, function: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """The child's side: our loggers' records go to `records`, and `function`'s result or
    exception goes back through `sender`."""
    own = logging.getLogger(OWN_LOGGER)
    own.handlers[:] = [logging.handlers.QueueHandler(records)]
    own.setLevel(logging.INFO)
    own.propagate = False
    try:
        with terminate_as_interrupt():  # the parent's terminate() also ends this child's own children
            outcome = (True, function(*args, **kwargs), "")
    except BaseException as error:  # everything goes back to the parent, which raises it
        outcome = (False, error, traceback.format_exc())
    try:
        sender.send(outcome)
    except OSError:  # the parent stopped listening (it was interrupted): nobody to answer
        pass
    sender.close()


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))
