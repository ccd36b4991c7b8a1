# syntax=docker/dockerfile:1
# The histopath web app: Django behind gunicorn (`histopath serve`) on port 8000, with the
# model either embedded (a pushed SavedModel mounted at HISTOPATH_SERVING_DIR) or served by
# TF Serving (TF_SERVING_URL). CPU-only TensorFlow; runs as a non-root user.
#
# Build (from the repository root; the context must be the repo, see /.dockerignore):
#   docker build -f serving/docker/webapp.Dockerfile -t histopath/webapp:latest .
# Without a reachable registry, build a local base first (scripts/make-base-image.sh) and:
#   docker build --network host --build-arg BASE_IMAGE=histopath/base:bookworm-py311 \
#       -f serving/docker/webapp.Dockerfile -t histopath/webapp:latest .
#
# Run with an embedded model (a folder holding <model_name>/<version>/saved_model.pb):
#   docker run --rm -p 8000:8000 -e SECRET_KEY=change-me -e ALLOWED_HOSTS=localhost \
#       -v /path/to/serving:/models:ro histopath/webapp:latest
# Run against TF Serving instead:
#   docker run --rm -p 8000:8000 -e SECRET_KEY=change-me \
#       -e TF_SERVING_URL=http://tfserving:8501 histopath/webapp:latest
#
# Environment (all read by the web app at start-up):
#   SECRET_KEY             Django secret key. REQUIRED in production (DEBUG=0); never bake it in.
#   ALLOWED_HOSTS          comma-separated host names the app answers to (default: localhost,127.0.0.1)
#   DEBUG                  1 for Django debug pages; keep 0 (the default) in production
#   HISTOPATH_SERVING_DIR  folder of pushed models <model_name>/<version>/ (default /models)
#   HISTOPATH_MODEL_NAME   model to serve (default histopath)
#   TF_SERVING_URL         e.g. http://tfserving:8501: predict through TF Serving's REST API
#                          instead of loading the SavedModel in-process (unset: embedded)
#   HISTOPATH_STATE_DIR    folder of the SQLite prediction history (default /var/lib/histopath;
#                          mount a volume there to keep it, or set DATABASE_URL)
#   DATABASE_URL           sqlite:////abs/file or postgres://... (PostgreSQL needs psycopg,
#                          not in requirements/webapp.txt)
#   CSRF_TRUSTED_ORIGINS   e.g. https://histopath.example.org when served behind HTTPS
#   PORT                   port gunicorn listens on (default 8000)
#   WEB_CONCURRENCY        gunicorn worker processes (default 1: each holds a TF model)
# The root filesystem may be read-only: only /tmp and HISTOPATH_STATE_DIR are written.

ARG BASE_IMAGE=python:3.11-slim

# ---- deps stage: a virtualenv with the pinned requirements --------------------------------
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
# A venv works the same on python:3.11-slim and on Debian's python3 (PEP 668 forbids
# installing into Debian's system Python).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# This layer is cached until requirements/webapp.txt changes.
COPY requirements/webapp.txt /tmp/requirements/webapp.txt
# --no-deps: webapp.txt is a complete, pinned closure (checked by tests/test_dockerfiles.py).
# TensorFlow's C++ headers (~175 MB) only serve to compile custom ops: not needed here.
RUN pip install --no-deps -r /tmp/requirements/webapp.txt \
    && rm -rf "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tensorflow/include"

# ---- wheel stage: the project as a wheel (a code change rebuilds only from here) ---------
FROM deps AS wheel
WORKDIR /src
COPY setup.py README.md ./
COPY histopath/ histopath/
COPY data/ data/
COPY models/ models/
COPY evaluation/ evaluation/
COPY components/ components/
COPY pipeline/ pipeline/
COPY serving/ serving/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# ---- runtime stage: the venv and the project wheel; no sources, no build leftovers -----
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="histopath-webapp" \
      org.opencontainers.image.description="Breast histopathology benign/malignant web app (Django + TensorFlow CPU)" \
      org.opencontainers.image.source="https://github.com/histopath-tfx/histopath-tfx"
# A fixed UID so Kubernetes securityContext.runAsUser / runAsNonRoot can match it.
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} histopath \
    && useradd --system --uid ${APP_UID} --gid histopath --home-dir /home/histopath \
       --create-home --shell /usr/sbin/nologin histopath \
    && mkdir -p /models /var/lib/histopath && chown histopath:histopath /models /var/lib/histopath
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels/ /tmp/wheels/
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import histopath.cli, histopath.serving.cli, histopath.models.image_ops" \
    && histopath serve --help > /dev/null
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PORT=8000 \
    WEB_CONCURRENCY=1 \
    DEBUG=0 \
    ALLOWED_HOSTS=localhost,127.0.0.1 \
    HISTOPATH_SERVING_DIR=/models \
    HISTOPATH_MODEL_NAME=histopath \
    HISTOPATH_STATE_DIR=/var/lib/histopath \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_RUNTIME_DIR=/tmp
# (XDG_RUNTIME_DIR: gunicorn's control socket goes there, not into the read-only $HOME.)
USER histopath
WORKDIR /home/histopath
EXPOSE 8000
# Healthy = gunicorn answers and the database is reachable (GET /healthz). gunicorn only
# accepts requests once each worker has loaded the model (gunicorn_conf.post_worker_init).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
# `histopath serve` migrates the database, then execs gunicorn. The model comes from
# TF_SERVING_URL when set, else from HISTOPATH_SERVING_DIR (both read from the environment).
CMD ["sh", "-c", "exec histopath serve --host 0.0.0.0 --port \"${PORT}\" --workers \"${WEB_CONCURRENCY}\""]
