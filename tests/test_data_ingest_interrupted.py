"""An interrupted `histopath ingest` leaves nothing behind (issue 21): SIGTERM and SIGINT
remove its work folder and stop the Beam worker processes it started; a work folder left
by a run that was killed outright is removed by the next run.

The real command runs on the real IDC folder and is signalled mid-way.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from serving_fixtures import start_process


def _work_dirs(parent, name: str) -> list:
    return sorted(path for path in parent.iterdir() if path.name.startswith(f".{name}.tmp-"))


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_ingest_removes_its_work_folder_and_processes(shared_data, tmp_path, signal_number):
    output = tmp_path / "records"
    stale = tmp_path / ".records.tmp-4194303-killed"  # a run killed with -9 long ago
    stale.mkdir()
    (stale / "data-00000-of-00001.tfrecord.gz").write_bytes(b"\0" * 4096)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    run = start_process(["ingest", "--dataset", "idc", "--source", str(shared_data / "idc"),
                         "--output", str(output), "--shards", "8"], tmp_path / "ingest.log")
    process = psutil.Process(run.process.pid)
    deadline = time.monotonic() + 180
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and run.process.poll() is None:
        children = process.children(recursive=True)
        if children and _work_dirs(tmp_path, "records") and not stale.exists():
            break
        time.sleep(0.2)
    assert run.process.poll() is None, "the ingestion ended before it could be interrupted"
    assert children and not stale.exists(), (tmp_path / "ingest.log").read_text()[-3000:]
    time.sleep(2.0)  # the workers are writing shards

    run.process.send_signal(signal_number)
    assert run.process.wait(timeout=60) == 130
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], f"worker processes outlived the ingestion: {alive}"
    assert _work_dirs(tmp_path, "records") == []
    assert not output.exists()
    assert "interrupted" in (tmp_path / "ingest.log").read_text()
