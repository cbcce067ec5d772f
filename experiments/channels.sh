#!/usr/bin/env bash
# Noisy and lossy channels on the CPU protocol (README, "Noisy and lossy channels"): plain split learning,
# ADC at 0.1, Top-K at 0.1 and 4-bit quantization (1/8), through AWGN and Rayleigh fading at -10 to 20 dB,
# packet loss of 5 and 20 % with and without ARQ, and the research code's AWGN setting; one job at a time.
#   experiments/channels.sh DATA_ROOT OUT_DIR [SEED]
set -euo pipefail
data=$1; out=$2; seed=${3:-0}
splitvit=${SPLITVIT:-splitvit}
methods=("none|method=none" "adc0.1|method=adc method.compression=0.1" "topk0.1|method=topk method.compression=0.1"
         "quant4|method=quant method.bits=4")
jobs=()
for m in "${methods[@]}"; do
  jobs+=("${m%%|*}/ideal|${m#*|} channel=ideal")
done
for snr in 20 10 0 -10; do
  for ch in awgn rayleigh; do
    for m in "${methods[@]}"; do jobs+=("${m%%|*}/${ch}_${snr}dB|${m#*|} channel=$ch channel.snr_db=$snr"); done
  done
done
for loss in 0.05 0.2; do
  for arq in false true; do
    for m in "${methods[@]}"; do
      jobs+=("${m%%|*}/loss${loss}_arq-${arq}|${m#*|} channel=packet_loss channel.loss=$loss channel.arq=$arq")
    done
  done
done
for m in "${methods[@]:0:2}"; do
  jobs+=("${m%%|*}/research|${m#*|} +experiment=cpu/channel_research")
  jobs+=("${m%%|*}/research_corrected|${m#*|} +experiment=cpu/channel_research channel.power=sample")
done
mkdir -p "$out"
for job in "${jobs[@]}"; do
  name=${job%%|*} args=${job#*|}
  [[ -f $out/$name/summary.json ]] && continue
  experiment=+experiment=cpu/channel
  [[ $args == *+experiment=* ]] && experiment=
  mkdir -p "$out/${name%/*}"
  echo "$(date +%H:%M:%S) $name"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $splitvit train $experiment dataset.root="$data" seed="$seed" $args \
    run_dir="$out/$name" > "$out/$name.stdout" 2>&1 || echo "failed: $name (see $out/$name.stdout)"
done
