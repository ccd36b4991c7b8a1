# The pipeline image on TFX's published image: the default where Docker Hub / gcr.io are
# reachable. TFX's image already holds TFX 1.16.0, TensorFlow, Beam, TFT, TFMA and TFDV at
# the versions TFX was tested with, so only the project is installed (--no-deps). Kubeflow
# sets each task's command, which replaces the image's entrypoint.
#
# Build and push from the repository root (the context is the repo, see /.dockerignore):
#   docker build -f pipeline/docker/tfx.Dockerfile -t REGISTRY/histopath/pipeline:TAG .
#   docker push REGISTRY/histopath/pipeline:TAG
#
# Where no registry is reachable, pipeline/docker/pipeline.Dockerfile builds the same
# image from requirements/lock.txt (scripts/build-pipeline-image.sh); that one is built and
# run by the tests here, this one is checked statically (tests/test_dockerfiles.py).

ARG BASE_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="histopath-pipeline" \
      org.opencontainers.image.description="TFX 1.16 with the histopath components (Kubeflow pipeline image)"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
ENV TF_USE_LEGACY_KERAS=1
# The whole (.dockerignore-filtered) context: every package folder of setup.py comes along.
COPY . /histopath-src/
# A regular (non-editable) install, then a check that the modules TFX loads by name
# (executors, the Transform preprocessing_fn, the Trainer run_fns) import with TFX's image.
RUN python -m pip install --no-deps /histopath-src && rm -rf /histopath-src \
    && cd / && python -c "import histopath, histopath.components.trainer, histopath.models.preprocessing, tfx; print('histopath on tfx', tfx.__version__)"
