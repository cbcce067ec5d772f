#!/usr/bin/env bash
# Where to split, on the CPU protocol (the paper's figure 7 question: does a deeper split help ADC?): ADC at
# 0.2 with the client running blocks 1..l, l = 1 to 6 of the 8 (l = 2 is the protocol's own split, in
# results/cpu_protocol/runs/main_adc). One job at a time; a job stopped half-way resumes from its last evaluation.
#   experiments/split_point.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 )); extra=("$@")
# shellcheck source=experiments/jobs.sh
source "$(dirname "$0")/jobs.sh"
mkdir -p "$out"
for l in 1 3 4 5 6; do run_job "adc0.2_split${l}|method=adc method.compression=0.2 split.index=$l"; done
