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
