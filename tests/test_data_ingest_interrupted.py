"""An interrupted `histopath ingest` leaves nothing behind (issue 21): SIGTERM and SIGINT
remove its work folder and stop the Beam worker processes it started; a work folder left
by a run that was killed outright is removed by the next run.

The real command runs on the real IDC patches, linked five times over under new patient
ids so that it is still running when it is signalled, however fast the machine.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

import psutil
import pytest
from serving_fixtures import start_process


COPIES = 5  # the real IDC set ingests in seconds on a fast machine


def _linked_copies(idc: pathlib.Path, root: pathlib.Path, copies: int) -> pathlib.Path:
    """`copies` copies of the IDC tree as symlinks, patient `P` renamed `<k>P` in copy k."""
    for patch in idc.glob("*/*/*.png"):
        patient, label = patch.parent.parent.name, patch.parent.name
        for copy in range(1, copies + 1):
            new_patient = f"{copy}{patient}"
            folder = root / new_patient / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / patch.name.replace(patient, new_patient, 1)).symlink_to(patch)
    return root


def _work_dirs(parent, name: str) -> list:
    return sorted(path for path in parent.iterdir() if path.name.startswith(f".{name}.tmp-"))


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_ingest_removes_its_work_folder_and_processes(shared_data, tmp_path, signal_number):
    output = tmp_path / "records"
    stale = tmp_path / ".records.tmp-4194303-killed"  # a run killed with -9 long ago
    stale.mkdir()
    (stale / "data-00000-of-00001.tfrecord.gz").write_bytes(b"\0" * 4096)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    source = _linked_copies(shared_data / "idc", tmp_path / "idc", COPIES)
    run = start_process(["ingest", "--dataset", "idc", "--source", str(source),
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
