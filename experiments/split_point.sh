#!/usr/bin/env bash
# Where to split, on the CPU protocol (the paper's figure 7 question: does a deeper split help ADC?): ADC at
# 0.2 with the client running blocks 1..l, l = 1 to 6 of the 8 (l = 2 is the protocol's own split, in
# docs/cpu_protocol/runs/main_adc). One job at a time; a job stopped half-way resumes from its last evaluation.
#   experiments/split_point.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 ))
splitvit=${SPLITVIT:-splitvit}
mkdir -p "$out"
for l in 1 3 4 5 6; do
  name=adc0.2_split${l}_s$seed
  [[ -f $out/$name/summary.json ]] && continue
  resume=false
  [[ -d $out/$name/checkpoints ]] && resume=true
  echo "$(date +%H:%M:%S) $name (resume=$resume)"
  OMP_NUM_THREADS=1 $splitvit train +experiment=cpu/common dataset.root="$data" seed="$seed" method=adc \
    method.compression=0.2 split.index="$l" "$@" train.resume=$resume run_dir="$out/$name" >> "$out/$name.stdout" 2>&1 \
    || echo "failed: $name (see $out/$name.stdout)"
done
