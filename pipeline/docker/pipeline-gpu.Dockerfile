# The pipeline image with CUDA: the CPU pipeline image (pipeline.Dockerfile) plus the
# nvidia-*-cu12 wheels of requirements/lock-gpu.txt, so that TensorFlow 2.16.2 (the same
# wheel: PyPI's Linux `tensorflow` is built with CUDA 12.3 / cuDNN 8.9) trains on a GPU.
# The CUDA wheels are one layer on top of the CPU image's: a registry stores and a node
# pulls the CPU layers once for both tags. About 3 GB more than the CPU image. The node
# brings the NVIDIA driver (libcuda.so.1), mounted by the NVIDIA container toolkit.
#
#   scripts/build-pipeline-image.sh                                   # histopath/pipeline:latest
#   docker build --network host --build-arg PIPELINE_IMAGE=histopath/pipeline:latest \
#       -f pipeline/docker/pipeline-gpu.Dockerfile -t histopath/pipeline-gpu:latest .
#   (or GPU=1 scripts/build-pipeline-image.sh, which does both)
#
# On a machine with a GPU (docs/kubeflow.md, "GPU image"):
#   docker run --rm --gpus all histopath/pipeline-gpu:latest \
#       python -c "import tensorflow as tf; print(tf.config.list_physical_devices('GPU'))"

ARG PIPELINE_IMAGE=histopath/pipeline:latest
FROM ${PIPELINE_IMAGE}
LABEL org.opencontainers.image.title="histopath-pipeline-gpu" \
      org.opencontainers.image.description="TFX 1.16 with the histopath components and CUDA 12.3 (Kubeflow pipeline image)"

# TensorFlow 2.16 does not find the pip-installed CUDA libraries by itself
# (tensorflow/tensorflow#63362, #65842): every nvidia/<name>/lib folder goes on the library
# path, nvcc's ptxas (XLA compiles PTX with it) on PATH and nvcc's libdevice in XLA's CUDA
# data folder. The RUN below checks that this list names every lib folder of the wheels
# that holds a shared library.
ENV NVIDIA_ROOT=/opt/venv/lib/python3.11/site-packages/nvidia
ENV LD_LIBRARY_PATH=${NVIDIA_ROOT}/cublas/lib:${NVIDIA_ROOT}/cuda_cupti/lib:${NVIDIA_ROOT}/cuda_nvrtc/lib:${NVIDIA_ROOT}/cuda_runtime/lib:${NVIDIA_ROOT}/cudnn/lib:${NVIDIA_ROOT}/cufft/lib:${NVIDIA_ROOT}/curand/lib:${NVIDIA_ROOT}/cusolver/lib:${NVIDIA_ROOT}/cusparse/lib:${NVIDIA_ROOT}/nccl/lib:${NVIDIA_ROOT}/nvjitlink/lib \
    PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvcc/bin:/opt/venv/bin:$PATH \
    XLA_FLAGS=--xla_gpu_cuda_data_dir=/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvcc \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The pins of lock-gpu.txt that lock.txt lacks (the CUDA wheels), installed like the lock;
# then every pinned distribution of lock-gpu.txt present in the image must have the lock's
# version (the CPU image leaves out only its test-only packages), and the checks of
# pipeline/gpu_check.py run (no GPU needed: the libraries load, TF is built with CUDA).
COPY requirements/lock.txt requirements/lock-gpu.txt /tmp/requirements/
RUN set -eu; \
    grep -vxF -f /tmp/requirements/lock.txt /tmp/requirements/lock-gpu.txt | grep -E '^[A-Za-z0-9].*==' \
        > /tmp/requirements/cuda.txt; \
    echo "installing $(wc -l < /tmp/requirements/cuda.txt) CUDA wheels of requirements/lock-gpu.txt"; \
    pip install --no-deps --ignore-requires-python -r /tmp/requirements/cuda.txt; \
    python -m histopath.pipeline.gpu_check --lock /tmp/requirements/lock-gpu.txt --libraries; \
    rm -rf /tmp/requirements
