"""Checks of the GPU pipeline image (pipeline/docker/pipeline-gpu.Dockerfile).

Three checks, each usable without the others:

* `--lock FILE`: every distribution pinned in FILE that is installed has the pinned
  version, and every `nvidia-*` pin is installed (the image is the CUDA lock's).
* `--libraries`: TensorFlow is built with CUDA, and every CUDA library it opens at run time
  loads from the library path (no GPU needed; only the driver's libcuda.so.1 may be missing,
  the node's NVIDIA container toolkit mounts it); XLA's `ptxas` runs and its `libdevice`
  is where XLA_FLAGS says.
* always: TensorFlow's GPU list is printed as one JSON line; with `--expect-gpu` an empty
  list, or a matrix product that does not run on `/GPU:0`, fails.

    python -m histopath.pipeline.gpu_check --lock requirements/lock-gpu.txt --libraries
    docker run --rm --gpus all IMAGE python -m histopath.pipeline.gpu_check --libraries --expect-gpu
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Sequence

# The CUDA libraries TensorFlow 2.16 opens by name at run time (its dso_loader), and the
# wheel folder of each under site-packages/nvidia/.
CUDA_LIBRARIES = {
    "libcudart.so.12": "cuda_runtime", "libcublas.so.12": "cublas", "libcublasLt.so.12": "cublas",
    "libcufft.so.11": "cufft", "libcurand.so.10": "curand", "libcusolver.so.11": "cusolver",
    "libcusparse.so.12": "cusparse", "libcudnn.so.8": "cudnn", "libnccl.so.2": "nccl",
    "libcupti.so.12": "cuda_cupti", "libnvrtc.so.12": "cuda_nvrtc", "libnvJitLink.so.12": "nvjitlink",
}
DRIVER_LIBRARY = "libcuda.so.1"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")


class GpuCheckError(RuntimeError):
    """A check of the GPU image failed; the message says which and why."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_lock(lock_path: str) -> int:
    """Installed versions against the pins of `lock_path`.

    Returns:
        The number of pinned distributions found installed.

    Raises:
        GpuCheckError: a pinned distribution has another version, or an nvidia-* pin is absent.
    """
    path = pathlib.Path(lock_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise GpuCheckError(f"{lock_path}: cannot read the lock ({error.strerror})") from error
    pins = {_canonical(m.group(1)): m.group(3) for m in map(_PIN.match, lines) if m}
    if not pins:
        raise GpuCheckError(f"{lock_path}: no `name==version` pins")
    installed = {_canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = [f"{name} {installed[name]} (pinned {version})" for name, version in sorted(pins.items())
             if name in installed and installed[name] != version]
    missing = [f"{name}=={version}" for name, version in sorted(pins.items())
               if name.startswith("nvidia-") and name not in installed]
    if wrong or missing:
        raise GpuCheckError(f"{lock_path}: the environment is not the lock's: "
                            + "; ".join(filter(None, [f"other versions: {', '.join(wrong)}" if wrong else "",
                                                      f"not installed: {', '.join(missing)}" if missing else ""])))
    return sum(name in installed for name in pins)


def _nvidia_root() -> pathlib.Path | None:
    import nvidia  # namespace package of the nvidia-*-cu12 wheels

    roots = [pathlib.Path(p) for p in getattr(nvidia, "__path__", [])]
    return roots[0] if roots else None


def check_libraries() -> dict[str, str]:
    """TensorFlow's CUDA build and the loadability of its CUDA libraries.

    Returns:
        TensorFlow's CUDA and cuDNN versions and the ptxas version line.

    Raises:
        GpuCheckError: TF lacks CUDA, a library does not load, a wheel's lib folder is not on
            LD_LIBRARY_PATH, or ptxas is not on PATH.
    """
    import tensorflow as tf

    if not tf.test.is_built_with_cuda():
        raise GpuCheckError(f"tensorflow {tf.__version__} is not built with CUDA")
    build = tf.sysconfig.get_build_info()
    try:
        root = _nvidia_root()
    except ImportError:
        root = None
    if root is None:
        raise GpuCheckError("no nvidia-*-cu12 wheel is installed (the `nvidia` package is missing): "
                            "install requirements/lock-gpu.txt")
    library_path = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    unlisted = sorted(str(d) for d in root.glob("*/lib") if any(d.glob("*.so*")) and str(d) not in library_path)
    if unlisted:
        raise GpuCheckError(f"LD_LIBRARY_PATH lacks the CUDA wheels' folders {unlisted}: TensorFlow 2.16 "
                            "would not find their libraries")
    data_dir = re.search(r"--xla_gpu_cuda_data_dir=(\S+)", os.environ.get("XLA_FLAGS", ""))
    libdevice = pathlib.Path(data_dir.group(1) if data_dir else "/usr/local/cuda") / "nvvm/libdevice/libdevice.10.bc"
    if not libdevice.is_file():
        raise GpuCheckError(f"XLA finds no {libdevice}: set XLA_FLAGS=--xla_gpu_cuda_data_dir={root / 'cuda_nvcc'}")
    failed = []
    for soname, folder in CUDA_LIBRARIES.items():
        try:
            ctypes.CDLL(soname)
        except OSError as error:
            if DRIVER_LIBRARY not in str(error):  # needing the node's driver is expected here
                failed.append(f"{soname} (nvidia/{folder}/lib): {error}")
    if failed:
        raise GpuCheckError("CUDA libraries TensorFlow opens do not load: " + "; ".join(failed))
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        raise GpuCheckError(f"ptxas is not on PATH (XLA needs it): add {root / 'cuda_nvcc' / 'bin'}")
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True, check=True).stdout
    return {"tensorflow": tf.__version__, "cuda_version": str(build.get("cuda_version")),
            "cudnn_version": str(build.get("cudnn_version")), "ptxas": version.strip().splitlines()[-1]}


def list_gpus(expect_gpu: bool) -> list[str]:
    """TensorFlow's GPUs; with `expect_gpu`, also a matrix product placed on the first.

    Raises:
        GpuCheckError: `expect_gpu` and TensorFlow sees no GPU, or the product ran elsewhere.
    """
    import tensorflow as tf

    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    if expect_gpu:
        if not gpus:
            raise GpuCheckError("TensorFlow lists no GPU: run the container with the GPU (docker run --gpus all, "
                                "or a pod with an nvidia.com/gpu limit) on a node with the NVIDIA driver")
        with tf.device("/GPU:0"):
            product = tf.linalg.matmul(tf.ones((256, 256)), tf.ones((256, 256)))
        if "GPU" not in product.device or float(product[0, 0]) != 256.0:
            raise GpuCheckError(f"the matrix product ran on {product.device}, not on /GPU:0")
    return gpus


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the requested checks; prints one JSON line; exit status 1 on a failed check."""
    parser = argparse.ArgumentParser(prog="python -m histopath.pipeline.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--lock", metavar="FILE", help="check installed versions against this lock")
    parser.add_argument("--libraries", action="store_true", help="check TF's CUDA build and libraries")
    parser.add_argument("--expect-gpu", action="store_true", help="fail unless TensorFlow lists a GPU")
    args = parser.parse_args(argv)
    result: dict[str, object] = {}
    try:
        if args.lock:
            result["pinned_installed"] = check_lock(args.lock)
        if args.libraries:
            result.update(check_libraries())
        result["gpus"] = list_gpus(args.expect_gpu)
    except GpuCheckError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
