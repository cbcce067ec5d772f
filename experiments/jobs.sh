# Sourced by the experiment scripts: run_job "name|overrides" runs one job into $out/<name><suffix>, skips it
# once it has a summary.json, and resumes it from its last evaluation when it was stopped half-way.
# Expects: out (OUT_DIR), extra (more overrides, an array). By default a job is one of the CPU protocol:
# base=(+experiment=cpu/common dataset.root=$data seed=$seed) and suffix=_s$seed; a script sets its own base
# (an array) and suffix for other jobs. SPLITVIT may name the command.
run_job() {
  local -a start
  if [[ -n ${base+set} ]]; then start=("${base[@]}"); else start=(+experiment=cpu/common "dataset.root=$data" "seed=$seed"); fi
  local name=${1%%|*}${suffix-_s$seed} args=${1#*|} resume=false
  [[ -f $out/$name/summary.json ]] && return 0
  [[ -d $out/$name/checkpoints ]] && resume=true
  echo "$(date +%H:%M:%S) $name (resume=$resume)"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 ${SPLITVIT:-splitvit} train "${start[@]}" $args "${extra[@]}" train.resume=$resume \
    run_dir="$out/$name" >> "$out/$name.stdout" 2>&1 || echo "failed: $name (see $out/$name.stdout)"
}
