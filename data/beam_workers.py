"""Beam SDK worker processes started before the pipeline needs them.

In the DirectRunner's multi-processing mode every SDK worker is a fresh
`python -m apache_beam.runners.worker.sdk_worker_main`, started only once the pipeline
runs, and each spends ~1.7 s importing Beam before it takes any work; on a small data
set that start-up is a large part of an ingest. `PrestartedWorkers` starts the worker
interpreters at the beginning of `ingest`, so that they import Beam and the shard writer
while the main process lists the files and imports Beam itself, and gives the runner a
launch command that hands the runner's connection details to one of them instead of
starting a cold interpreter. It is the same runner (the DirectRunner's `FnApiRunner`)
with the same one-process-per-worker execution; only the start of the processes moves
(and the workers skip importing optional cloud client libraries shard writing never uses).

Hand-off: worker `i` waits on the named pipe `worker-<i>.fifo` of the pool folder. The
launch command (`beam_worker_launcher.py`, standard library only) claims a waiting worker
by renaming its `free-<i>` token (atomic; it holds the worker's pid, so a launcher never
waits for a worker that died), writes the runner's environment (control
address, worker id, pipeline options) into that pipe and exits; the worker then runs the
SDK harness exactly as `sdk_worker_main.main` does. With no worker left to claim, the
launcher becomes a normal cold `sdk_worker_main`, so the runner never waits for nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator, List, Sequence, Tuple

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "beam_worker_launcher.py")
# Modules a shard-writing worker needs; imported before the hand-off, while waiting.
_WARM_IMPORTS = ("apache_beam.runners.worker.sdk_worker_main", "histopath.data.shard_writer")
# Never imported by the workers: client libraries that Beam imports only optionally (its
# BigQuery, Pub/Sub, GCS and MongoDB IO, and pandas for its DataFrame API) and that shard
# writing never uses; together ~0.55 s of each worker's ~1.2 s start-up. The pool is
# therefore for pipelines that use none of those (ingest writes local files).
_NOT_IMPORTED = ("google.cloud.bigquery", "google.cloud.bigquery_storage_v1", "google.cloud.pubsub",
                 "google.cloud.pubsub_v1", "google.pubsub_v1", "google.cloud.storage", "pymongo", "pandas")
_DIRECT_RUNNER_NAMES = {"directrunner", "direct", "apache_beam.runners.direct.direct_runner.directrunner"}


def beam_flags(beam_args: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """`(name, value)` of every flag in `beam_args`, in order.

    Args:
      beam_args: Beam flags, `--name=value` or `--name value` (as Beam's own parser takes
        them); a flag without a value gets "".
    """
    args = list(beam_args)
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, has_value, value = arg.partition("=")
        if not has_value and index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
        yield name, value


def uses_local_worker_processes(beam_args: Sequence[str]) -> bool:
    """Whether `beam_args` leave the default runner: the DirectRunner, multi-processing.

    Args:
      beam_args: the user's Beam flags (see `beam_flags`); later ones win.
    """
    runner, mode = "DirectRunner", "multi_processing"
    for name, value in beam_flags(beam_args):
        if name == "--runner":
            runner = value
        elif name == "--direct_running_mode":
            mode = value
    return runner.lower() in _DIRECT_RUNNER_NAMES and mode == "multi_processing"


class PrestartedWorkers:
    """`count` SDK worker interpreters, started now, for the next pipeline run.

    Use as a context manager; leaving it stops the workers no pipeline claimed (workers
    that ran a pipeline exit by themselves when the runner closes their control channel).

    Args:
      count: worker processes to start (the run's `--direct_num_workers`).
    """

    def __init__(self, count: int):
        self.folder = tempfile.mkdtemp(prefix="histopath-beam-workers-")
        self._processes: List[subprocess.Popen] = []
        try:
            for index in range(count):
                os.mkfifo(os.path.join(self.folder, f"worker-{index}.fifo"))
                process = subprocess.Popen(
                    [sys.executable, "-m", "histopath.data.beam_workers", self.folder, str(index)])
                self._processes.append(process)
                token = os.path.join(self.folder, f"free-{index}")
                with open(token + ".partial", "w", encoding="utf-8") as handle:
                    handle.write(str(process.pid))
                os.replace(token + ".partial", token)  # claimable only with its pid inside
        except BaseException:
            self.close()
            raise

    @property
    def command(self) -> str:
        """The shell command the runner starts for each worker."""
        return " ".join(shlex.quote(part) for part in (sys.executable, "-S", LAUNCHER, self.folder))

    def environment(self):
        """The Beam environment (a subprocess SDK environment) that runs `command`."""
        from apache_beam.transforms import environments

        return environments.SubprocessSDKEnvironment.from_command_string(command_string=self.command)

    def close(self) -> None:
        """Stops the workers that were never claimed and removes the pool folder."""
        for index, process in enumerate(self._processes):
            if os.path.exists(os.path.join(self.folder, f"free-{index}")) and process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PrestartedWorkers":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run_pipeline_on(workers: PrestartedWorkers, pipeline_fn, options) -> None:
    """Builds (`pipeline_fn(pipeline)`) and runs a pipeline on the prestarted workers.

    The runner is the one the DirectRunner picks in multi-processing mode, `FnApiRunner`
    with the workers' options, with `workers.environment()` as its worker environment.

    Args:
      workers: the pool; its size is the run's `direct_num_workers`.
      pipeline_fn: adds the transforms to the given pipeline.
      options: the run's `PipelineOptions` (DirectOptions.direct_running_mode must be
        multi_processing; it is applied through the worker environment here).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    provision_info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options())))
    runner = fn_runner.FnApiRunner(default_environment=workers.environment(), provision_info=provision_info)
    # FnApiRunner would replace the environment with cold `sdk_worker_main` processes for
    # "multi_processing"; the worker count still comes from direct_num_workers.
    options.view_as(DirectOptions).direct_running_mode = "in_memory"
    runner_logger = logging.getLogger(fn_runner.__name__)
    quiet = _DropMessage("direct_running_mode should be")
    runner_logger.addFilter(quiet)
    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            pipeline_fn(pipeline)
    finally:
        runner_logger.removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self._fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self._fragment not in record.getMessage()


class _SkipModules:
    """Import hook: the named packages raise ImportError (as if not installed)."""

    def __init__(self, names: Sequence[str]):
        self._names = tuple(names)

    def find_spec(self, name, path=None, target=None):
        if any(name == skipped or name.startswith(skipped + ".") for skipped in self._names):
            raise ImportError(f"{name} is not imported in a histopath ingest worker")
        return None


def _serve(folder: str, index: int) -> int:
    """A prestarted worker: import, wait for the hand-off, run the SDK harness."""
    import importlib

    sys.meta_path.insert(0, _SkipModules(_NOT_IMPORTED))
    for module in _WARM_IMPORTS:
        importlib.import_module(module)
    from apache_beam.runners.worker import sdk_worker_main

    try:
        with open(os.path.join(folder, f"worker-{index}.fifo"), encoding="utf-8") as pipe:
            handed_over = pipe.read()
    except OSError:
        return 0  # the pool was closed before any pipeline claimed this worker
    if not handed_over:
        return 0
    environment = json.loads(handed_over)  # without the logging service: see the launcher
    os.environ.update(environment)
    if "default_sdk_harness_log_level" not in environment.get("PIPELINE_OPTIONS", ""):
        # Cold workers log to the runner's logging service, which shows nothing; on stderr
        # only errors are worth a user's attention (a failing DoFn's traceback also
        # reaches the main process, which raises it).
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    fn_log_handler, harness, _ = sdk_worker_main.create_harness(dict(os.environ))
    try:
        harness.run()
    finally:
        if fn_log_handler:
            fn_log_handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], int(sys.argv[2])))
