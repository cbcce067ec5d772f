# Sourced by the experiment scripts: run_job "name|overrides" runs one CPU-protocol job into $out/<name>_s$seed,
# skips it once it has a summary.json, and resumes it from its last evaluation when it was stopped half-way.
# Expects: data (DATA_ROOT), out (OUT_DIR), seed, extra (more overrides, an array); SPLITVIT may name the command.
run_job() {
  local name=${1%%|*}_s$seed args=${1#*|} resume=false
  [[ -f $out/$name/summary.json ]] && return 0
  [[ -d $out/$name/checkpoints ]] && resume=true
  echo "$(date +%H:%M:%S) $name (resume=$resume)"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 ${SPLITVIT:-splitvit} train +experiment=cpu/common dataset.root="$data" seed="$seed" $args \
    "${extra[@]}" train.resume=$resume run_dir="$out/$name" >> "$out/$name.stdout" 2>&1 \
    || echo "failed: $name (see $out/$name.stdout)"
}
