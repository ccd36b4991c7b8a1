"""`output_dir.remove_stale_work_dirs`: only the folders of runs that are gone."""

from __future__ import annotations

import os

from histopath.data import output_dir


def test_only_work_folders_of_gone_processes_for_this_output_are_removed(tmp_path):
    output = tmp_path / "records"
    dead_pid = 4194303  # above the kernel's pid_max ceiling: never a live process
    folders = {
        "gone": tmp_path / f".records.tmp-{dead_pid}-abc",
        "alive": tmp_path / f".records.tmp-{os.getpid()}-abc",
        "other output": tmp_path / f".other.tmp-{dead_pid}-abc",
        "no pid": tmp_path / ".records.tmp-notapid-abc",
    }
    for folder in folders.values():
        folder.mkdir()
        (folder / "part").write_bytes(b"x")
    assert output_dir.remove_stale_work_dirs(str(output)) == [str(folders["gone"])]
    assert [name for name, folder in folders.items() if folder.exists()] == ["alive", "other output", "no pid"]


def test_a_new_work_folder_is_made_beside_the_output_after_clearing_stale_ones(tmp_path):
    stale = tmp_path / ".records.tmp-4194303-old"
    stale.mkdir()
    work = output_dir.make_work_dir(str(tmp_path / "records"))
    assert not stale.exists() and os.path.dirname(work) == str(tmp_path)
    assert os.path.basename(work).startswith(f".records.tmp-{os.getpid()}-") and not os.listdir(work)
