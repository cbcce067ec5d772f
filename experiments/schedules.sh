#!/usr/bin/env bash
# Compression schedules for ADC on the CPU protocol (docs: "Most accuracy per byte"): the target moved over
# the protocol's 2-epoch byte budget from 0.02 to 1.0 and from 0.05 to 0.5, linearly and along a cosine.
# One job at a time; a job stopped half-way resumes from its last evaluation.
#   experiments/schedules.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 ))
splitvit=${SPLITVIT:-splitvit}
jobs=()
for ends in "0.02 1.0" "0.05 0.5"; do
  read -r start end <<< "$ends"
  for kind in linear cosine; do
    jobs+=("adc_${kind}_${start}-${end}|method=adc compression_schedule=$kind compression_schedule.start=$start compression_schedule.end=$end")
  done
done
mkdir -p "$out"
for job in "${jobs[@]}"; do
  name=${job%%|*}_s$seed args=${job#*|}
  [[ -f $out/$name/summary.json ]] && continue
  resume=false
  [[ -d $out/$name/checkpoints ]] && resume=true
  echo "$(date +%H:%M:%S) $name (resume=$resume)"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $splitvit train +experiment=cpu/common dataset.root="$data" seed="$seed" $args "$@" \
    train.resume=$resume run_dir="$out/$name" >> "$out/$name.stdout" 2>&1 || echo "failed: $name (see $out/$name.stdout)"
done
