"""models/isolation.py: the function runs in another process, results and errors come back."""

import os

import pytest

from histopath.errors import DataError
from histopath.models.isolation import run_in_child


def _pid_and_sum(values):
    return os.getpid(), sum(values)


def _refuse(name):
    raise DataError(f"{name}: no examples")


def test_the_function_runs_in_a_child_and_its_result_comes_back():
    pid, total = run_in_child(_pid_and_sum, [1, 2, 3])
    assert total == 6 and pid != os.getpid()


def test_an_exception_in_the_child_is_raised_in_the_parent():
    with pytest.raises(DataError, match="fold-3: no examples"):
        run_in_child(_refuse, "fold-3")


def test_a_child_that_dies_without_answering_is_an_error_not_a_hang():
    with pytest.raises(ChildProcessError, match="exit code 3"):
        run_in_child(os._exit, 3)


@pytest.mark.parametrize("nested", [False, True])
def test_sigterm_while_waiting_ends_the_child_at_once(tmp_path, nested):
    """The CLI's SIGTERM handling (`interrupts.terminate_as_interrupt`) around a long fit:
    the run stops within seconds and the child does not outlive it, nor does a child of
    the child (the Trainer's process and a fold's)."""
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    script = f"""
import os, signal, threading, time
from histopath.interrupts import Terminated, terminate_as_interrupt
from histopath.models.isolation import run_in_child
from histopath.models.isolation_test import _write_pid_and_sleep, _in_a_child
threading.Timer({8.0 if nested else 4.0}, os.kill, (os.getpid(), signal.SIGTERM)).start()
with terminate_as_interrupt():
    try:
        run_in_child(*({nested} and (_in_a_child,) or ()), _write_pid_and_sleep, {str(pid_file)!r})
    except Terminated:
        print("terminated")
"""
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "terminated" in finished.stdout, finished.stderr
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def _in_a_child(function, *args):
    return run_in_child(function, *args)


def _write_pid_and_sleep(path):
    import pathlib
    import time

    pathlib.Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def _log_progress(text):
    import logging

    logging.getLogger("histopath.progress").info(text)
    return "done"


def test_the_childs_log_records_reach_the_parents_loggers(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="histopath.progress"):
        assert run_in_child(_log_progress, "fold 2/5 epoch 3/12") == "done"
    assert [r.getMessage() for r in caplog.records if r.name == "histopath.progress"] == ["fold 2/5 epoch 3/12"]


def _log_many(lines):
    import logging

    for line in range(lines):
        logging.getLogger("histopath.progress").info("line %d", line)
    return "done"


def test_every_record_the_child_logged_before_answering_reaches_the_parent(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="histopath.progress"):
        assert run_in_child(_log_many, 2000) == "done"
    lines = [r.getMessage() for r in caplog.records if r.name == "histopath.progress"]
    assert lines == [f"line {line}" for line in range(2000)]
