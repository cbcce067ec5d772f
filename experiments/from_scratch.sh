#!/usr/bin/env bash
# The from-scratch runs of the docs' results page ("Trained from scratch"): vit_mini_patch4_32, seed 0, no
# pretrained weights. On the embedded digits, ADC at 0.1 (the default) and plain split learning over a modelled
# 20 Mbit/s link with 20 ms latency (time to accuracy), and plain split learning given ADC's bytes; on CIFAR-100
# (no augmentation, CIFAR's statistics), plain split learning and ADC under one uncompressed epoch of bytes.
# Tables: python experiments/scratch_report.py OUT_DIR. A job with a summary.json is skipped; one stopped
# half-way resumes from its last evaluation.
#   experiments/from_scratch.sh DATA_ROOT OUT_DIR [EXTRA OVERRIDES...]
set -euo pipefail
data=$1; out=$2; shift 2; extra=("$@")
slow="link.bandwidth_mbps=20 link.latency_ms=20"
cifar="dataset=cifar100 dataset.root=$data dataset.augment=none dataset.normalize=dataset train.budget_epochs=1"
jobs=(
  "digits_adc|$slow"
  "digits_none|method=none $slow"
  "digits_none_budget4|method=none train.budget_epochs=4"
  "cifar100_none|method=none $cifar"
  "cifar100_adc|$cifar"
)
# shellcheck source=experiments/jobs.sh
source "$(dirname "$0")/jobs.sh"
base=(train.progress=false) suffix=""  # the model's and dataset's defaults, not the CPU protocol's
mkdir -p "$out"
for job in "${jobs[@]}"; do run_job "$job"; done
