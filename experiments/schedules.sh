#!/usr/bin/env bash
# Compression schedules for ADC on the CPU protocol (docs: "Most accuracy per byte"): the target moved over
# the protocol's 2-epoch byte budget from 0.02 to 1.0 and from 0.05 to 0.5, linearly and along a cosine.
# One job at a time; a job stopped half-way resumes from its last evaluation.
#   experiments/schedules.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 )); extra=("$@")
# shellcheck source=experiments/jobs.sh
source "$(dirname "$0")/jobs.sh"
jobs=()
for ends in "0.02 1.0" "0.05 0.5"; do
  read -r start end <<< "$ends"
  for kind in linear cosine; do
    jobs+=("adc_${kind}_${start}-${end}|method=adc compression_schedule=$kind compression_schedule.start=$start compression_schedule.end=$end")
  done
done
mkdir -p "$out"
for job in "${jobs[@]}"; do run_job "$job"; done
