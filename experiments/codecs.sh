#!/usr/bin/env bash
# Value codecs on top of a method, on the CPU protocol (docs: "Most accuracy per byte"): ADC at 0.1 and 0.2
# and Top-K at 0.2 with int8 and int4, plain split learning with fp16 and int8, at the protocol's 2-epoch
# byte budget, cheapest first. One job at a time; a job stopped half-way resumes from its last evaluation.
#   experiments/codecs.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 ))
splitvit=${SPLITVIT:-splitvit}
jobs=(
  "none_fp16|method=none codec=fp16"
  "none_int8|method=none codec=int8"
  "adc0.2_int8|method=adc method.compression=0.2 codec=int8"
  "adc0.1_int8|method=adc method.compression=0.1 codec=int8"
  "topk0.2_int8|method=topk method.compression=0.2 codec=int8"
  "adc0.2_int4|method=adc method.compression=0.2 codec=int4"
  "adc0.1_int4|method=adc method.compression=0.1 codec=int4"
  "topk0.2_int4|method=topk method.compression=0.2 codec=int4"
)
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
