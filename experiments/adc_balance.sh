#!/usr/bin/env bash
# ADC's balance at xi = 0.1 on the CPU protocol (the paper's figure 3 question: is the best split of xi the
# balanced one?): k of the 17 tokens kept and T of the 128 samples merged, T = round(0.1 * 128 * 17 / k),
# from tokens only (k = 17) to samples only (k = 2); k = 5, T = 44 is next to the balanced sqrt(0.1) (5, 40).
# One job at a time; a job stopped half-way resumes from its last evaluation.
#   experiments/adc_balance.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 )); extra=("$@")
# shellcheck source=experiments/jobs.sh
source "$(dirname "$0")/jobs.sh"
jobs=()
for k in 2 3 4 5 6 9 17; do
  T=$(python3 -c "print(round(0.1 * 128 * 17 / $k))")
  jobs+=("k${k}_T${T}|method=adc method.token_ratio=$(python3 -c "print($k / 17)") method.batch_ratio=$(python3 -c "print($T / 128)")")
done
mkdir -p "$out"
for job in "${jobs[@]}"; do run_job "$job"; done
