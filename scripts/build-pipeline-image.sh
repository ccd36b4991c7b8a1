#!/usr/bin/env bash
# Builds the pipeline image (every Kubeflow / Vertex AI task runs in it) from
# requirements/lock.txt, with the local Docker engine and no registry:
#
#   scripts/build-pipeline-image.sh                      # -> histopath/pipeline:latest
#   IMAGE=REGISTRY/histopath/pipeline:TAG scripts/build-pipeline-image.sh && docker push ...
#
# The base image is histopath/base:bookworm-py311, made without any registry by
# scripts/make-base-image.sh (run automatically when missing; needs root + debootstrap).
# Where Docker Hub is reachable, BASE_IMAGE=python:3.11-slim works too, and
# pipeline/docker/tfx.Dockerfile builds the image on TFX's published one instead.
#
# With GPU=1 it then builds the CUDA variant on top (pipeline/docker/pipeline-gpu.Dockerfile,
# the wheels of requirements/lock-gpu.txt, ~3 GB more) and prints both tags.
#
# Environment:
#   IMAGE        tag to build            (default histopath/pipeline:latest)
#   BASE_IMAGE   Python 3.11 base image  (default histopath/base:bookworm-py311)
#   GPU=1        also build GPU_IMAGE    (default: IMAGE with pipeline -> pipeline-gpu)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE="${IMAGE:-histopath/pipeline:latest}"
BASE_IMAGE="${BASE_IMAGE:-histopath/base:bookworm-py311}"

log() { echo "[build-pipeline-image $(date +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# build TAG DOCKERFILE BUILD_ARG LOG: builds one image, logs its time and size, prints its tag.
# --network host: pip reaches the package index through the host's network (a daemon
# started with --bridge=none gives build containers no other).
build() {
  local tag=$1 dockerfile=$2 build_arg=$3 build_log=$4 start size
  start=$(date +%s)
  docker build --network host --build-arg "$build_arg" -f "$REPO/pipeline/docker/$dockerfile" -t "$tag" "$REPO" \
    > "$build_log"
  size=$(docker image inspect -f '{{.Size}}' "$tag")
  log "built $tag in $(( $(date +%s) - start )) s: $(awk -v s="$size" 'BEGIN {printf "%.2f GB", s / 1e9}')"
  echo "$tag"
}

command -v docker >/dev/null || die "docker is not installed (apt-get install -y docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers. Start one, e.g.:
  dockerd --iptables=false --bridge=none --data-root /var/lib/histopath-docker &"
if [[ "$BASE_IMAGE" == histopath/base:* ]] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE missing: making it (scripts/make-base-image.sh)"
  BASE_TAG="$BASE_IMAGE" bash "$REPO/scripts/make-base-image.sh"
fi

log "building $IMAGE on $BASE_IMAGE (the lock layer takes a few minutes the first time)"
build "$IMAGE" pipeline.Dockerfile "BASE_IMAGE=$BASE_IMAGE" "${BUILD_LOG:-/dev/stderr}"

if [ "${GPU:-0}" = 1 ]; then
  GPU_IMAGE="${GPU_IMAGE:-${IMAGE/pipeline:/pipeline-gpu:}}"
  [ "$GPU_IMAGE" != "$IMAGE" ] || die "set GPU_IMAGE: cannot derive it from $IMAGE"
  log "building $GPU_IMAGE on $IMAGE (the CUDA wheels are ~3 GB to download)"
  build "$GPU_IMAGE" pipeline-gpu.Dockerfile "PIPELINE_IMAGE=$IMAGE" "${GPU_BUILD_LOG:-/dev/stderr}"
fi
