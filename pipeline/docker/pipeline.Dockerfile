# The image every TFX component of the histopath pipeline runs in on Kubeflow Pipelines /
# Vertex AI, built from requirements/lock.txt (exactly the packages of `make venv`) on a
# Python 3.11 base. With no registry, scripts/build-pipeline-image.sh builds it on the
# Debian bookworm base that scripts/make-base-image.sh makes with debootstrap:
#
#   docker build --network host --build-arg BASE_IMAGE=histopath/base:bookworm-py311 \
#       -f pipeline/docker/pipeline.Dockerfile -t histopath/pipeline:latest .
# Online, the default python:3.11-slim works too (or pipeline/docker/tfx.Dockerfile, on
# TFX's published image). The whole lock, test-only packages included: --build-arg LOCK_EXCLUDE=
# (No BuildKit features are used, so no `# syntax=` frontend is pulled.)

ARG BASE_IMAGE=python:3.11-slim
# Packages of the lock that PyPI only has as C/C++ sources (pyfarmhash: TFDV; crcmod: Beam/GCS
# checksums, silently pure-Python without a compiler); the host's `make venv` compiles them.
ARG COMPILED_SDISTS="pyfarmhash crcmod"

# ---- sdist stage: wheels of COMPILED_SDISTS at the lock's versions ------------------------
# The compiler stays in this stage; only the wheels reach the image.
FROM ${BASE_IMAGE} AS sdist-wheels
ARG COMPILED_SDISTS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++ python3-dev \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/lock.txt /tmp/requirements/lock.txt
RUN set -eu; python3 -m venv /opt/build; \
    pins=$(for name in $COMPILED_SDISTS; do grep -iE "^${name}==" /tmp/requirements/lock.txt; done); \
    /opt/build/bin/pip install --no-deps $(grep -E '^(setuptools|wheel)==' /tmp/requirements/lock.txt); \
    /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels $pins; ls -l /wheels

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="histopath-pipeline" \
      org.opencontainers.image.description="TFX 1.16 with the histopath components (Kubeflow pipeline image)"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib
# A venv: PEP 668 forbids installing into Debian's system Python; same on python:3.11-slim.
RUN python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---- dependencies: cached until requirements/lock.txt (or LOCK_EXCLUDE) changes ----------
COPY requirements/lock.txt /tmp/requirements/lock.txt
# Test-only packages of the lock, and what only they pull in (pytest: iniconfig, pluggy;
# playwright: greenlet; kubernetes-validate: importlib-resources); ~250 MB of image. Outside
# tests nothing imports them except behind try/except (kubernetes' DynamicClient.validate,
# nbconvert's webpdf exporter, anyio's pytest runner). NOT droppable although they are in
# requirements.in for the notebook tests: ipykernel (ipywidgets 7 imports it, and
# tensorflow_model_analysis/__init__ swallows that ImportError, leaving tfma empty), nbformat,
# nbclient (jupyter-server, nbconvert). --build-arg LOCK_EXCLUDE= installs the whole lock.
ARG LOCK_EXCLUDE="pytest pytest-timeout iniconfig pluggy playwright greenlet kubernetes-validate importlib-resources"
ARG COMPILED_SDISTS
# Same flags as the Makefile's .venv: the lock is a complete closure (--no-deps) and TFX 1.16
# declares Python < 3.11 although every dependency has cp311 wheels (--ignore-requires-python).
# TensorFlow's C++ headers (~420 MB) only serve to compile custom ops: removed.
# The compiled sdists are left out here and installed from the sdist stage's wheels below:
# those wheels are not byte-reproducible, so a rebuilt sdist stage must not invalidate this
# (~2.5 min) layer.
RUN set -eu; \
    pattern=$(printf '%s\n' $LOCK_EXCLUDE $COMPILED_SDISTS | sed 's/[-_.]/[-_.]/g' | paste -sd'|'); \
    grep -viE "^($pattern)(\[.*\])?==" /tmp/requirements/lock.txt > /tmp/requirements/image.txt; \
    echo "installing $(grep -cE '^[A-Za-z0-9]' /tmp/requirements/image.txt) of $(grep -cE '^[A-Za-z0-9]' /tmp/requirements/lock.txt) pinned packages from the index (+ COMPILED_SDISTS below)"; \
    pip install --no-deps $(grep -E '^(setuptools|wheel)==' /tmp/requirements/image.txt); \
    pip install --no-deps --ignore-requires-python -r /tmp/requirements/image.txt; \
    rm -rf /tmp/requirements "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tensorflow/include"
COPY --from=sdist-wheels /wheels/ /tmp/wheels/
RUN pip install --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import farmhash, crcmod._crcfunext, tfx, tensorflow, kfp, apache_beam, tensorflow_model_analysis as tfma; tfma.EvalConfig; print('tfx', tfx.__version__, 'tf', tensorflow.__version__, 'kfp', kfp.__version__)"

# A non-root user with a home (Kubernetes runAsNonRoot / runAsUser can match the UID). The
# image stays root by default like TFX's image: kfp.local's DockerRunner (kfp 2.8) cannot
# set a user and bind-mounts the host's pipeline_root, which a non-root image cannot write
# unless that folder is writable for the UID. Any UID works (HOME falls back to /).
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} histopath \
    && useradd --system --uid ${APP_UID} --gid histopath --home-dir /home/histopath \
       --create-home --shell /usr/sbin/nologin histopath

# ---- the project: a change anywhere in the (.dockerignore-filtered, ~1 MB) context reruns
# only this step (~15 s). The whole context is copied rather than a list of folders, so that
# a new top-level package in setup.py's SUBPACKAGE_DIRS (models/, evaluation/) needs no edit.
COPY . /histopath-src/
# A regular (non-editable) install, then every installed histopath module is imported (TFX
# loads the components and the Transform/Trainer module files by name), except tests and the
# Django web app (it needs its settings; it has its own image).
RUN pip install --no-deps --no-build-isolation /histopath-src \
    && rm -rf /histopath-src \
    && cd / && python -c "import importlib, pkgutil, histopath, tfx; \
names = [m.name for m in pkgutil.walk_packages(histopath.__path__, 'histopath.') \
         if not m.name.endswith(('_test', '.conftest')) and '.webapp' not in m.name]; \
[importlib.import_module(n) for n in names]; print('histopath', len(names), 'modules on tfx', tfx.__version__)"
