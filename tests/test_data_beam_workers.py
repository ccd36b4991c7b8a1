"""Prestarted Beam SDK workers: the runner's workers are the processes started beforehand,
the launcher never waits for a dead or missing worker, and nothing is left running."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from histopath.data import beam_worker_launcher, beam_workers


@pytest.mark.parametrize("beam_args, expected", [
    ([], True),
    (["--direct_num_workers=4"], True),
    (["--direct_running_mode=in_memory"], False),
    (["--direct_running_mode", "multi_threading"], False),
    (["--direct_running_mode=in_memory", "--direct_running_mode=multi_processing"], True),
    (["--runner=DataflowRunner", "--project=p"], False),
    (["--runner", "FlinkRunner"], False),
    (["--runner=DirectRunner"], True),
])
def test_only_the_local_multi_processing_runner_uses_prestarted_workers(beam_args, expected):
    assert beam_workers.uses_local_worker_processes(beam_args) is expected


def test_beam_flags_take_both_spellings_in_order():
    flags = list(beam_workers.beam_flags(
        ["--direct_num_workers", "4", "--save_main_session", "--runner=DirectRunner", "stray"]))
    assert flags == [("--direct_num_workers", "4"), ("--save_main_session", ""), ("--runner", "DirectRunner")]


@pytest.mark.parametrize("beam_args, expected", [
    ([], 2),
    (["--direct_num_workers=3"], 3),
    (["--direct_num_workers", "4"], 4),
    (["--direct_running_mode=in_memory"], 1),
])
def test_ingest_counts_the_workers_beam_will_start(beam_args, expected):
    from histopath.data.ingest import _direct_num_workers

    assert _direct_num_workers(beam_args, 2) == expected


def _pid_of(_):
    return os.getpid()


def _touch(pid, prefix):
    open(f"{prefix}-{pid}", "w").close()


def test_pipeline_runs_on_the_prestarted_processes_and_leaves_none_behind(tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions
    import apache_beam as beam

    # The workers unpickle this module's functions: let them import it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))

    out = tmp_path / "pids"
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with beam_workers.PrestartedWorkers(2) as workers:
        pool_pids = {process.pid for process in workers._processes}

        def build(pipeline):
            _ = (pipeline
                 | beam.Create(range(40), reshuffle=False)
                 | beam.Reshuffle()
                 | beam.Map(_pid_of)
                 | beam.Distinct()
                 | beam.Map(_touch, prefix=str(out)))

        beam_workers.run_pipeline_on(workers, build, options)
        claimed = sorted(name for name in os.listdir(workers.folder) if name.startswith("claimed-"))
        folder = workers.folder
    used = {int(path.name.rsplit("-", 1)[1]) for path in tmp_path.glob("pids-*")}
    assert used and used <= pool_pids  # the work ran in the prestarted processes
    assert claimed == ["claimed-0", "claimed-1"]
    assert os.getpid() not in used
    assert not os.path.exists(folder)
    for process in workers._processes:  # claimed workers exit once the runner is done
        assert process.wait(timeout=30) == 0


def test_unclaimed_workers_are_stopped_on_close():
    workers = beam_workers.PrestartedWorkers(2)
    workers.close()
    for process in workers._processes:
        assert process.wait(timeout=10) is not None
    assert not os.path.exists(workers.folder)


def test_launcher_hands_over_to_a_waiting_worker_only(tmp_path):
    # No worker: the launcher reports it (and would become a cold sdk_worker_main).
    assert beam_worker_launcher.hand_over(str(tmp_path)) is False
    assert beam_worker_launcher.hand_over(str(tmp_path / "missing")) is False
    # A token whose worker is dead is skipped instead of waited for.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.mkfifo(tmp_path / "worker-0.fifo")
    (tmp_path / "free-0").write_text(str(dead.pid))
    assert beam_worker_launcher.hand_over(str(tmp_path)) is False
    assert (tmp_path / "claimed-0").exists() and not (tmp_path / "free-0").exists()


def test_launcher_writes_the_runner_environment_into_the_workers_pipe(tmp_path, monkeypatch):
    import json
    import threading

    os.mkfifo(tmp_path / "worker-3.fifo")
    (tmp_path / "free-3").write_text(str(os.getpid()))  # this (live) process plays the worker
    received = {}

    def worker():
        with open(tmp_path / "worker-3.fifo", encoding="utf-8") as pipe:
            received.update(json.loads(pipe.read()))

    reader = threading.Thread(target=worker)
    reader.start()
    monkeypatch.setenv("CONTROL_API_SERVICE_DESCRIPTOR", "url: 'localhost:1234'")
    monkeypatch.setenv("WORKER_ID", "worker_7")
    monkeypatch.setenv("LOGGING_API_SERVICE_DESCRIPTOR", "url: 'localhost:99'")  # dies with the launcher
    monkeypatch.setenv("UNRELATED", "x")
    assert beam_worker_launcher.hand_over(str(tmp_path)) is True
    reader.join(timeout=10)
    assert received["CONTROL_API_SERVICE_DESCRIPTOR"] == "url: 'localhost:1234'"
    assert received["WORKER_ID"] == "worker_7"
    assert "UNRELATED" not in received and "LOGGING_API_SERVICE_DESCRIPTOR" not in received
