"""Tests of the GPU image checks on this (CPU) environment: the lock check against the real
installed distributions, and the library check's refusal where no CUDA wheel is installed."""

from __future__ import annotations

import importlib.metadata

import pytest

from histopath.pipeline import gpu_check


def _write_lock(tmp_path, lines):
    path = tmp_path / "lock.txt"
    path.write_text("# header\n" + "".join(f"{line}\n    # via x\n" for line in lines))
    return str(path)


def test_lock_check_accepts_the_installed_versions(tmp_path):
    lock = _write_lock(tmp_path, [f"tensorflow=={importlib.metadata.version('tensorflow')}",
                                  f"apache-beam=={importlib.metadata.version('apache-beam')}",
                                  "not-installed-here==1.0"])
    assert gpu_check.check_lock(lock) == 2


def test_lock_check_names_the_other_version_and_the_missing_cuda_wheel(tmp_path):
    lock = _write_lock(tmp_path, ["tensorflow==0.0.1", "nvidia-cudnn-cu12==8.9.7.29"])
    with pytest.raises(gpu_check.GpuCheckError) as error:
        gpu_check.check_lock(lock)
    message = str(error.value)
    assert lock in message and "tensorflow" in message and "pinned 0.0.1" in message
    assert "not installed: nvidia-cudnn-cu12==8.9.7.29" in message


def test_lock_check_refuses_an_unreadable_or_empty_lock(tmp_path):
    with pytest.raises(gpu_check.GpuCheckError, match="cannot read the lock"):
        gpu_check.check_lock(str(tmp_path / "absent.txt"))
    (tmp_path / "empty.txt").write_text("# nothing pinned\n")
    with pytest.raises(gpu_check.GpuCheckError, match="no `name==version` pins"):
        gpu_check.check_lock(str(tmp_path / "empty.txt"))


def test_every_cuda_library_belongs_to_a_wheel_of_the_gpu_lock():
    import pathlib

    lock = (pathlib.Path(__file__).resolve().parents[1] / "requirements" / "lock-gpu.txt").read_text()
    for folder in set(gpu_check.CUDA_LIBRARIES.values()):
        assert f"nvidia-{folder.replace('_', '-')}-cu12==" in lock, folder


def test_main_without_cuda_wheels_fails_with_one_clear_line(capsys):
    try:
        import nvidia  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CUDA wheels are installed here")
    assert gpu_check.main(["--libraries"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: ") and "requirements/lock-gpu.txt" in err


def test_main_lists_no_gpu_here_and_expect_gpu_fails(capsys):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == '{"gpus": []}'
    assert gpu_check.main(["--expect-gpu"]) == 1
    assert "TensorFlow lists no GPU" in capsys.readouterr().err
