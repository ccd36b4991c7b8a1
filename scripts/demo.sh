#!/usr/bin/env bash
# The README's main job: generate the synthetic BreakHis-layout sample set, run the whole
# TFX pipeline on it (both models), and print the run report. Usage: scripts/demo.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo}"
bin=.venv/bin
if [ ! -d "$out/sample" ]; then
  mkdir -p "$out"
  "$bin/histopath" make-sample --dataset breakhis --output "$out/sample" > "$out/sample.json"
  echo "generated the synthetic sample in $out/sample (counts: $out/sample.json)"
fi
"$bin/histopath" run --dataset breakhis --data "$out/sample" --output "$out/run" \
  --preset demo
echo
echo "Serve the pushed model:   $bin/histopath model-server --model-base-path $out/run/serving --model-name histopath"
echo "Web app for pathologists: HISTOPATH_SERVING_DIR=$out/run/serving $bin/histopath serve --port 8000"
