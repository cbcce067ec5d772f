#!/usr/bin/env bash
# Value codecs on top of a method, on the CPU protocol (docs: "Most accuracy per byte"): ADC at 0.1 and 0.2
# and Top-K at 0.2 with int8 and int4, plain split learning with fp16 and int8, and ADC 0.2 with int4 whose
# merged labels cross as their members', at the protocol's 2-epoch byte budget. One job at a time; a job
# stopped half-way resumes from its last evaluation.
#   experiments/codecs.sh DATA_ROOT OUT_DIR [SEED] [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}; shift $(( $# < 3 ? $# : 3 )); extra=("$@")
# shellcheck source=experiments/jobs.sh
source "$(dirname "$0")/jobs.sh"
jobs=(
  "none_fp16|method=none codec=fp16"
  "none_int8|method=none codec=int8"
  "adc0.2_int8|method=adc method.compression=0.2 codec=int8"
  "adc0.1_int8|method=adc method.compression=0.1 codec=int8"
  "topk0.2_int8|method=topk method.compression=0.2 codec=int8"
  "adc0.2_int4|method=adc method.compression=0.2 codec=int4"
  "adc0.2_int4_members|method=adc method.compression=0.2 codec=int4 method.merged_labels=members"
  "adc0.1_int4|method=adc method.compression=0.1 codec=int4"
  "topk0.2_int4|method=topk method.compression=0.2 codec=int4"
)
mkdir -p "$out"
for job in "${jobs[@]}"; do run_job "$job"; done
