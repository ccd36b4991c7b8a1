#!/usr/bin/env bash
# Smoke test of the web app image with the LOCAL Docker engine: build it, export a model
# with the project's own export code, run the container on it and classify a real image
# through the web page's upload form (sign-in, CSRF and all), as a pathologist's browser
# would: a pathologist account is made in the container with `histopath webapp adduser`.
#
#   scripts/docker-smoke.sh                      # needs a running Docker engine
#   BASE_IMAGE=python:3.11-slim scripts/docker-smoke.sh   # where Docker Hub is reachable
#
# By default the base image is histopath/base:bookworm-py311, made without any registry by
# scripts/make-base-image.sh (run automatically when missing; needs root + debootstrap).
# The container runs like the Kubernetes pod: non-root, read-only root filesystem, all
# capabilities dropped, writable /tmp and state dir only. It uses the host network
# (`--network host`), so it also works with a daemon started with --bridge=none.
#
# Also checks the TF Serving recipe's layout (serving/docker/tfserving.Dockerfile) with a
# stand-in base image: the model lands at /models/<name>/<version>/ (TF Serving itself
# cannot be pulled here).
#
# Idempotent: removes its container, temp folders and the stand-in image on exit; keeps
# the web app image (KEEP_IMAGE=0 removes it too). Not part of the default test run.
#
# Environment:
#   IMAGE        tag to build                        (default histopath/webapp:smoke)
#   BASE_IMAGE   web app base image                  (default histopath/base:bookworm-py311)
#   PYTHON       Python of the project venv, to export the model (default .venv/bin/python)
#   HISTOPATH_SHARED_DATA  real data for the request (default ../shared/data)
#   STARTUP_TIMEOUT  seconds to wait for the container to become healthy (default 240)
#   KEEP_IMAGE   0 to remove the built image at the end (default 1)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE="${IMAGE:-histopath/webapp:smoke}"
BASE_IMAGE="${BASE_IMAGE:-histopath/base:bookworm-py311}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
DATA="${HISTOPATH_SHARED_DATA:-$(cd "$REPO/.." && pwd)/shared/data}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-240}"
KEEP_IMAGE="${KEEP_IMAGE:-1}"
MODEL_NAME=histopath
CONTAINER=histopath-webapp-smoke
LAYOUT_IMAGE=histopath/tfserving:smoke-layout
APP_UID=$(sed -n 's/^ARG APP_UID=\([0-9]*\).*/\1/p' "$REPO/serving/docker/webapp.Dockerfile")

log() { echo "[docker-smoke $(date +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

WORK=$(mktemp -d /tmp/histopath-docker-smoke.XXXXXX)
cleanup() {
  local status=$?
  if [ $status -ne 0 ] && docker container inspect "$CONTAINER" >/dev/null 2>&1; then
    log "container log (last 40 lines):"
    docker logs --tail 40 "$CONTAINER" >&2 2>&1 || true
  fi
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  docker image rm "$LAYOUT_IMAGE" >/dev/null 2>&1 || true
  [ "$KEEP_IMAGE" = 1 ] || docker image rm "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT

# --- 0. preconditions ---------------------------------------------------------------------
command -v docker >/dev/null || die "docker is not installed (apt-get install -y docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers. Start one, e.g.:
  dockerd --iptables=false --bridge=none --data-root /var/lib/histopath-docker &"
[ -x "$PYTHON" ] || die "$PYTHON not found (make venv)"
sample=$(find "$DATA/breakhis-full-size-samples" -name '*.png' 2>/dev/null | sort | head -n 1 || true)
[ -n "$sample" ] || sample=$(find "$DATA/breakhis-200x-224" -name '*.png' 2>/dev/null | sort | head -n 1 || true)
[ -n "$sample" ] || die "no BreakHis image under $DATA (set HISTOPATH_SHARED_DATA)"
docker rm -f "$CONTAINER" >/dev/null 2>&1 || true  # a leftover of an interrupted run

if [[ "$BASE_IMAGE" == histopath/base:* ]] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE missing: making it (scripts/make-base-image.sh)"
  BASE_TAG="$BASE_IMAGE" bash "$REPO/scripts/make-base-image.sh"
fi

# --- 1. build -------------------------------------------------------------------------------
log "building $IMAGE on $BASE_IMAGE"
previous_image=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
build_start=$(date +%s)
docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  -f "$REPO/serving/docker/webapp.Dockerfile" -t "$IMAGE" "$REPO" > "$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log" >&2; die "docker build failed (log above)"; }
build_seconds=$(( $(date +%s) - build_start ))
# The image this tag pointed at before is now untagged: drop it (and only it) unless in use.
if [ -n "$previous_image" ] && [ "$previous_image" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker image rm "$previous_image" >/dev/null 2>&1 || true
fi
image_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
image_user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
[ -n "$image_user" ] && [ "$image_user" != root ] && [ "$image_user" != 0 ] || die "image runs as root"

# --- 2. a pushed model, exported by the project's own code --------------------------------
serving_dir="$WORK/serving"
log "exporting an (untrained) MIL model to $serving_dir/$MODEL_NAME/1 with models/export.py"
export_start=$(date +%s)
"$PYTHON" - "$serving_dir/$MODEL_NAME/1" <<'PY' > "$WORK/export.log" 2>&1 || { tail -n 30 "$WORK/export.log" >&2; die "model export failed"; }
import sys

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from histopath.models import image_ops
from histopath.models.export import export_serving_model
from histopath.models.mil import build_mil_model
from histopath.models.config import MilConfig

tf.keras.utils.set_random_seed(0)
config = MilConfig()
model = build_mil_model(config)
export_serving_model(
    model,
    sys.argv[1],
    preprocess=lambda images: image_ops.decode_and_resize(images, config.image_size),
    model_info={"model_kind": "mil", "model_name": "histopath", "dataset": "docker-smoke (untrained)",
                "model_config": config.to_dict()},
    decision_threshold=0.5,
)
PY
export_seconds=$(( $(date +%s) - export_start ))
[ -f "$serving_dir/$MODEL_NAME/1/saved_model.pb" ] || die "the export wrote no saved_model.pb"
chmod -R a+rX "$WORK"  # the container user (uid $APP_UID) reads the model

# --- 3. run like the Kubernetes pod --------------------------------------------------------
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting $CONTAINER on 127.0.0.1:$port (read-only rootfs, uid $APP_UID, no capabilities)"
run_start=$(date +%s)
docker run -d --name "$CONTAINER" --network host \
  --read-only --tmpfs /tmp --tmpfs "/var/lib/histopath:uid=$APP_UID,gid=$APP_UID,mode=0700" \
  --cap-drop ALL --security-opt no-new-privileges \
  --memory 3g \
  -e PORT="$port" \
  -e SECRET_KEY="smoke-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" \
  -e ALLOWED_HOSTS=127.0.0.1,localhost \
  -e HISTOPATH_MODEL_NAME="$MODEL_NAME" \
  -v "$serving_dir:/models:ro" \
  "$IMAGE" >/dev/null

# Docker's own HEALTHCHECK must turn "healthy" (checks the probe command works too).
health=starting
while [ $(( $(date +%s) - run_start )) -lt "$STARTUP_TIMEOUT" ]; do
  [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || die "the container exited"
  health=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")
  [ "$health" = healthy ] && break
  sleep 2
done
[ "$health" = healthy ] || die "not healthy after ${STARTUP_TIMEOUT}s (status $health)"
healthy_seconds=$(( $(date +%s) - run_start ))
container_uid=$(docker exec "$CONTAINER" id -u)
[ "$container_uid" = "$APP_UID" ] || die "container runs as uid $container_uid"

# --- 4. sign in as a pathologist, classify a real image through the upload form -----------
base_url="http://127.0.0.1:$port"
jar="$WORK/cookies.txt"
user=smoke-pathologist
password="smoke-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
docker exec -e SMOKE_PASSWORD="$password" "$CONTAINER" \
  histopath webapp adduser "$user" --role pathologist --password-env SMOKE_PASSWORD > "$WORK/adduser.log" 2>&1 \
  || { cat "$WORK/adduser.log" >&2; die "histopath webapp adduser failed in the container"; }
login_status=$(curl -sS -c "$jar" -o /dev/null -w '%{http_code}' "$base_url/")
[ "$login_status" = 302 ] || die "GET / without signing in answered HTTP $login_status (expected a redirect to sign-in)"
curl -fsS -b "$jar" -c "$jar" "$base_url/accounts/login/" -o "$WORK/login.html" || die "GET /accounts/login/ failed"
csrf=$(sed -n 's/.*name="csrfmiddlewaretoken" value="\([^"]*\)".*/\1/p' "$WORK/login.html" | head -n 1)
[ -n "$csrf" ] || die "no CSRF token in the sign-in form"
signin_status=$(curl -sS -b "$jar" -c "$jar" -o "$WORK/signin.html" -w '%{http_code}' -H "Referer: $base_url/accounts/login/" \
  --data-urlencode "csrfmiddlewaretoken=$csrf" --data-urlencode "username=$user" \
  --data-urlencode "password=$password" "$base_url/accounts/login/")
[ "$signin_status" = 302 ] || die "signing in answered HTTP $signin_status (expected a redirect)"
curl -fsS -b "$jar" -c "$jar" "$base_url/" -o "$WORK/form.html" || die "GET / after signing in failed"
csrf=$(sed -n 's/.*name="csrfmiddlewaretoken" value="\([^"]*\)".*/\1/p' "$WORK/form.html" | head -n 1)
[ -n "$csrf" ] || die "no CSRF token in the upload form"
log "POST $(basename "$sample") ($(stat -c %s "$sample") bytes) to $base_url/"
predict_start=$("$PYTHON" -c 'import time; print(time.time())')
http_status=$(curl -sS -b "$jar" -o "$WORK/result.html" -w '%{http_code}' \
  -H "Referer: $base_url/" \
  -F "csrfmiddlewaretoken=$csrf" -F "display_name=docker smoke case" -F "image=@$sample;type=image/png" "$base_url/")
predict_ms=$("$PYTHON" -c "import time; print(round((time.time() - $predict_start) * 1000))")
[ "$http_status" = 200 ] || { sed -e 's/<[^>]*>//g' "$WORK/result.html" | grep -v '^\s*$' | head -n 20 >&2; die "POST answered HTTP $http_status"; }
summary=$("$PYTHON" - "$WORK/result.html" <<'PY'
import re, sys
html = open(sys.argv[1], encoding="utf-8").read()
label = re.search(r'id="result-label"[^>]*>\s*([^<]+?)\s*<', html)
probability = re.search(r'id="result-probability"[^>]*>\s*([0-9.]+)\s*%', html)
version = re.search(r'id="result-version"[^>]*>\s*([^<]+?)\s*<', html)
if not (label and probability):
    sys.exit("no result on the page")
if label.group(1) not in ("Benign", "Malignant"):
    sys.exit(f"unexpected label {label.group(1)!r}")
value = float(probability.group(1))
if not 0.0 <= value <= 100.0:
    sys.exit(f"probability {value} out of range")
heatmap = "yes" if re.search(r'<img[^>]+alt="[^"]*[Hh]eat', html) else "no"
print(f"label={label.group(1)} probability_of_malignancy={value}% model_version={version.group(1) if version else '?'} heatmap={heatmap}")
PY
) || die "the result page lacks a Benign/Malignant label and probability"
curl -fsS -b "$jar" "$base_url/history/" -o "$WORK/history.html" || die "GET /history/ failed"
grep -q "docker smoke case" "$WORK/history.html" && grep -q "1 prediction recorded by you" "$WORK/history.html" \
  || die "the prediction is not in the pathologist's history"

# --- 5. TF Serving recipe: model-baking layout only, on a stand-in base ------------------
layout="skipped"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  bash "$REPO/serving/docker/build-tfserving-image.sh" --serving-dir "$serving_dir" \
    --model-name "$MODEL_NAME" --tag "$LAYOUT_IMAGE" --tf-serving-image "$BASE_IMAGE" \
    > "$WORK/tfserving-build.log" 2>&1 || { tail -n 20 "$WORK/tfserving-build.log" >&2; die "tfserving recipe build failed"; }
  docker run --rm --network none "$LAYOUT_IMAGE" sh -c \
    'test "$MODEL_NAME" = histopath && test "$MODEL_BASE_PATH" = /models && test -r /models/histopath/1/saved_model.pb && test "$(id -u)" = 65534' \
    || die "tfserving image layout: expected /models/histopath/1/saved_model.pb readable by uid 65534"
  layout="ok (/models/$MODEL_NAME/1/saved_model.pb, MODEL_NAME=$MODEL_NAME, uid 65534)"
fi

echo "docker-smoke: OK"
echo "  image          $IMAGE on $BASE_IMAGE: $(awk -v b="$image_bytes" 'BEGIN {printf "%.2f GB (%d bytes)", b/1e9, b}'), user $image_user"
echo "  build          ${build_seconds}s"
echo "  model export   ${export_seconds}s"
echo "  start->healthy ${healthy_seconds}s (Docker HEALTHCHECK)"
echo "  prediction     ${predict_ms} ms (signed in as $user): $summary"
echo "  image          $(basename "$sample")"
echo "  tfserving      $layout"
