#!/usr/bin/env bash
# The best composed settings and plain split learning at 10 uncompressed epochs of bytes (the paper's budget)
# on the CPU protocol (docs: "Most accuracy per byte"), most telling first. The runs are long (ADC with int8 takes
# about 5 times its 2-epoch job); one job at a time, and a job stopped half-way resumes from its last evaluation.
#   experiments/ten_epochs.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 )); extra=("$@" train.budget_epochs=10)
# shellcheck source=experiments/jobs.sh
source "$(dirname "$0")/jobs.sh"
jobs=(
  "none|method=none"
  "none_int8|method=none codec=int8"
  "quant4|method=quant method.bits=4"
  "adc0.2_int8_members|method=adc method.compression=0.2 codec=int8 method.merged_labels=members"
  "adc0.2_int4_members|method=adc method.compression=0.2 codec=int4 method.merged_labels=members"
  "adc0.2_int8|method=adc method.compression=0.2 codec=int8"
  "adc0.1_int8|method=adc method.compression=0.1 codec=int8"
)
mkdir -p "$out"
for job in "${jobs[@]}"; do run_job "$job"; done
