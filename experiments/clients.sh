#!/usr/bin/env bash
# Several clients on the CPU protocol (README, "Several clients"): 5 clients, SplitFed-V2, ADC at 0.1
# against plain split learning and Top-K at 0.1, IID against Dirichlet(0.3); two jobs at a time.
#   experiments/clients.sh DATA_ROOT OUT_DIR [SEED]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}
splitvit=${SPLITVIT:-splitvit}
jobs=()
for part in "clients.partition=iid" "clients.partition=dirichlet clients.alpha=0.3"; do
  tag=${part#clients.partition=}; tag=${tag%% *}
  jobs+=("none_$tag|method=none $part")
  jobs+=("adc0.1_$tag|method=adc method.compression=0.1 $part")
  jobs+=("topk0.1_$tag|method=topk method.compression=0.1 $part")
done
run() {
  local name=${1%%|*} args=${1#*|}
  [[ -f $out/$name/summary.json ]] && return 0
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $splitvit train +experiment=cpu/clients dataset.root="$data" seed="$seed" $args \
    run_dir="$out/$name" > "$out/$name.stdout" 2>&1
}
mkdir -p "$out"
export -f run; export out data seed splitvit
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c 'run "$@"' _ {}
