#!/usr/bin/env bash
# Builds a TF Serving image with one pushed model baked in (serving/docker/tfserving.Dockerfile).
#
#   serving/docker/build-tfserving-image.sh --serving-dir DIR [--model-name NAME]
#       [--version N] [--tag IMAGE] [--tf-serving-image BASE] [-- extra docker build args]
#
#   --serving-dir       the pipeline's push destination: DIR/<model_name>/<version>/
#   --model-name        TF Serving model name (default histopath)
#   --version           the version folder to bake in (default: the highest number)
#   --tag               image name (default histopath/tfserving:<model_name>-v<version>)
#   --tf-serving-image  base image (default tensorflow/serving:2.16.1 as in the Dockerfile)
#
# Only the chosen version is copied into a temporary build context, so older versions in
# the serving dir do not bloat the image. Needs a Docker engine that can pull the base.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
serving_dir="" model_name="histopath" version="" tag="" base=""
while [ $# -gt 0 ]; do
  case "$1" in
    --serving-dir) serving_dir="$2"; shift 2 ;;
    --model-name) model_name="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --tf-serving-image) base="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "build-tfserving-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build-tfserving-image: error: $*" >&2; exit 1; }
[ -n "$serving_dir" ] || die "--serving-dir is required"
model_root="$serving_dir/$model_name"
[ -d "$model_root" ] || die "$model_root does not exist (expected <serving_dir>/<model_name>/<version>/)"
if [ -z "$version" ]; then
  version=$(find "$model_root" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | grep -E '^[0-9]+$' | sort -n | tail -n 1 || true)
  [ -n "$version" ] || die "no numeric version folder in $model_root"
fi
[ -f "$model_root/$version/saved_model.pb" ] || die "$model_root/$version has no saved_model.pb"
tag="${tag:-histopath/tfserving:${model_name}-v${version}}"

context=$(mktemp -d "${TMPDIR:-/tmp}/histopath-tfserving-context.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/$model_name"
cp -a "$model_root/$version" "$context/$model_name/$version"
chmod -R a+rX "$context"  # the image serves as `nobody`

build_args=(--build-arg "MODEL_NAME=$model_name")
[ -z "$base" ] || build_args+=(--build-arg "TF_SERVING_IMAGE=$base")
echo "building $tag from $model_root/$version" >&2
docker build -f "$here/tfserving.Dockerfile" "${build_args[@]}" -t "$tag" "$@" "$context"
echo "$tag"
