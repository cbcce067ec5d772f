#!/usr/bin/env bash
# ALaST on the CPU protocol (README, "ALaST"): full fine-tuning against ALaST at three settings, in one
# piece; then ADC at 0.1 with ALaST on the client's blocks against ADC alone. One job at a time.
#   experiments/alast.sh DATA_ROOT OUT_DIR [SEED]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}
splitvit=${SPLITVIT:-splitvit}
jobs=(
  "full|finetune=full"
  "alast_K4|finetune=alast finetune.K=4"
  "alast_K4_b0.5|finetune=alast finetune.K=4 finetune.b0=0.5 finetune.b_min=0.5"
  "alast_K6_b0.75|finetune=alast finetune.K=6 finetune.b0=0.75 finetune.b_min=0.5"
  # the co-author's code where it departs from the paper: importance by the batch's squared norm alone, then
  # with its other three choices (budgets from 0.9, pruning after a block, K drawn from softmax(budgets))
  "alast_K4_batch|finetune=alast finetune.K=4 finetune.importance=batch"
  "alast_K4_research|finetune=alast finetune.K=4 finetune.importance=batch finetune.b0=0.9 finetune.prune=after finetune.select=softmax"
  "adc0.1|split.index=2 method=adc method.compression=0.1"
  "adc0.1_alast_client|split.index=2 method=adc method.compression=0.1 finetune=alast finetune.where=client finetune.b0=0.5 finetune.b_min=0.5"
)
mkdir -p "$out"
for job in "${jobs[@]}"; do
  name=${job%%|*} args=${job#*|}
  [[ -f $out/$name/summary.json ]] && continue
  echo "$(date +%H:%M:%S) $name"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $splitvit train +experiment=cpu/alast dataset.root="$data" seed="$seed" $args \
    run_dir="$out/$name" > "$out/$name.stdout" 2>&1 || echo "failed: $name (see $out/$name.stdout)"
done
