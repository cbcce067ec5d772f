#!/usr/bin/env bash
# Copy the finished runs of the CPU protocol (run files only, no checkpoints) where the README's
# report is made from, and remake the report:  experiments/collect.sh runs/cpu docs/cpu_protocol
set -euo pipefail
src=${1:-runs/cpu}; dst=${2:-docs/cpu_protocol}
mkdir -p "$dst/runs"
find "$src" -name summary.json | while read -r s; do
  d=$(dirname "$s"); rel=${d#"$src"/}
  mkdir -p "$dst/runs/$rel"
  cp "$d"/summary.json "$d"/metrics.jsonl "$d"/config.yaml "$dst/runs/$rel/"
  [ -f "$d/splitvit.log" ] && cp "$d/splitvit.log" "$dst/runs/$rel/"
done
splitvit=${SPLITVIT:-splitvit}
"$splitvit" report "$dst/runs" --out "$dst"
