"""A Beam portable runner on this machine, as separate processes: Beam's Python job server
(`local_job_service_main`, the Job API a Flink/Spark job server also serves) and an SDK
worker pool (`worker_pool_main`, the EXTERNAL environment a Kubernetes worker-pool sidecar
serves), each started with the interpreter that runs the tests.

    with PortableBeam(log_dir) as beam:
        beam.pipeline_args  # --runner=PortableRunner --job_endpoint=... --environment_type=EXTERNAL ...
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: pathlib.Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{process.args} does not listen on {port} after {timeout:.0f} s: {log.read_text()[-2000:]}")


class PortableBeam:
    """Starts the job server and the worker pool; stops both (and only them) on exit."""

    def __init__(self, log_dir: pathlib.Path):
        self.log_dir = log_dir
        self.job_port = free_port()
        self.worker_port = free_port()
        self.processes: list[subprocess.Popen] = []

    @property
    def pipeline_args(self) -> list[str]:
        # --job_server_timeout is also the deadline of the job's state stream: a job running
        # longer than it (60 s by default) fails in the client with DEADLINE_EXCEEDED.
        return ["--runner=PortableRunner", f"--job_endpoint=localhost:{self.job_port}", "--job_server_timeout=3600",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{self.worker_port}"]

    def _start(self, name: str, argv: list[str], port: int) -> None:
        log = self.log_dir / f"{name}.log"
        # The pool starts each SDK worker as `python -c ...` from PATH: this interpreter's.
        env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
        with open(log, "wb") as output:
            process = subprocess.Popen([sys.executable, "-m", *argv], stdout=output, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        self.processes.append(process)
        _wait_for_port(port, process, log)

    def __enter__(self) -> "PortableBeam":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start("job_server", ["apache_beam.runners.portability.local_job_service_main",
                                       f"--job_port={self.job_port}",
                                       f"--staging_dir={self.log_dir / 'staging'}"], self.job_port)
            self._start("worker_pool", ["apache_beam.runners.worker.worker_pool_main",
                                        f"--service_port={self.worker_port}"], self.worker_port)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def worker_processes(self) -> int:
        """SDK workers the pool has started so far (they log their control address)."""
        return (self.log_dir / "worker_pool.log").read_text(errors="replace").count("Starting worker with command")

    def __exit__(self, *exc) -> None:
        # Each server leads its own process group: the pool's SDK worker processes go too.
        for process in reversed(self.processes):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue
