#!/usr/bin/env bash
# Runs the compiled pipeline end to end on this machine, every task in the pipeline image,
# as a Kubeflow Pipelines cluster would: builds the image (scripts/build-pipeline-image.sh),
# generates the demo sample, compiles the pipeline (`histopath compile`, preset demo) with
# every path in one mounted folder, and runs each task's container with the executor input
# the KFP driver would hand it (python -m histopath.pipeline.spec_runner).
#
#   scripts/kfp-local-run.sh [WORK_DIR]           # default: a new folder under /tmp
#
# Afterwards: WORK_DIR/pipeline.yaml (the spec), WORK_DIR/run/ (pipeline root, span store,
# report), WORK_DIR/serving/histopath/<version>/ (the pushed model), and the run summary
# WORK_DIR/run/pipeline_root/histopath/<run>/run_summary.json. Needs a Docker engine.
#
# Environment: IMAGE (default histopath/pipeline:latest), PYTHON (default .venv/bin/python).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${1:-}" ]; then mkdir -p "$1"; WORK=$(cd "$1" && pwd); else WORK=$(mktemp -d /tmp/histopath-kfp-local.XXXXXX); fi
IMAGE="${IMAGE:-histopath/pipeline:latest}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
BIN=$(dirname "$PYTHON")

log() { echo "[kfp-local-run $(date +%H:%M:%S)] $*" >&2; }

IMAGE="$IMAGE" bash "$REPO/scripts/build-pipeline-image.sh" >/dev/null
[ -d "$WORK/data" ] || "$BIN/histopath" make-sample --dataset breakhis --output "$WORK/data" >/dev/null
log "compiling the demo pipeline for $IMAGE"
"$BIN/histopath" compile --preset demo --dataset breakhis --data "$WORK/data" --pipeline-root "$WORK/run" \
  --serving-dir "$WORK/serving" --image "$IMAGE" --beam-arg=--direct_running_mode=in_memory \
  --output "$WORK/pipeline.yaml"
log "running every task in $IMAGE"
start=$(date +%s)
"$PYTHON" -m histopath.pipeline.spec_runner "$WORK/pipeline.yaml" --pipeline-root "$WORK/run/pipeline_root" \
  --mount "$WORK"
log "done in $(( $(date +%s) - start )) s; pushed: $(ls "$WORK/serving/histopath" 2>/dev/null | tr '\n' ' ')"
