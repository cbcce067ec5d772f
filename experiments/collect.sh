#!/usr/bin/env bash
# Copy the finished runs of the CPU protocol (run files only, no checkpoints) to where the README's
# report is made from, and remake the report:
#   experiments/collect.sh runs/cpu results/cpu_protocol
#   experiments/collect.sh results/cpu_protocol/runs results/cpu_protocol    (runs continued in place: report only)
set -euo pipefail
src=${1:-runs/cpu}; dst=${2:-results/cpu_protocol}
mkdir -p "$dst/runs"
if [ "$(realpath "$src")" != "$(realpath "$dst/runs")" ]; then
  find "$src" -name summary.json | while read -r s; do
    d=$(dirname "$s"); rel=${d#"$src"/}
    mkdir -p "$dst/runs/$rel"
    cp "$d"/summary.json "$d"/metrics.jsonl "$d"/config.yaml "$dst/runs/$rel/"
    if [ -f "$d/splitvit.log" ]; then cp "$d/splitvit.log" "$dst/runs/$rel/"; fi
  done
fi
"${SPLITVIT:-splitvit}" report "$dst/runs" out="$dst"
