"""Run the CPU protocol's fine-tuning comparison (docs/architecture.md), a few jobs at a time, seed by seed.

    python experiments/cpu_protocol.py --data /path/to/data --out runs/cpu [--seeds 0,1] [--jobs 2]

Every job is one ``splitvit train`` of a ``cpu/`` experiment (the same jobs as
``splitvit train --multirun +experiment=cpu/<name>``, which does the same one experiment at a
time); each goes to ``OUT/<experiment>/<its overrides>``, with one PyTorch thread per job. A job
whose ``summary.json`` exists is skipped, and one that was stopped half-way goes on from its last
evaluation's checkpoint (``train.resume=true``: the same numbers as a run never stopped), so the
script can be stopped and started again at any time; a job's folder is locked while it runs, so two
runs of the script on one folder share the work. Seed 0 of every experiment runs before seed 1.
Then: ``splitvit report OUT --out results/cpu_protocol``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from splitvit.plan import jobs

# the order jobs are listed in; within a seed they run cheapest first (see cost), so that a run of the
# script that is stopped early has a point of every method rather than every point of a few
EXPERIMENTS = (
    "main_none", "main_adc", "main_c3sl", "main_topk", "main_randtopk", "main_bottlenet", "main_quant",
    "adc_merge_only", "adc_select_only", "adc_feature", "main_fedlite", "main_lowrank",
)


# what a step costs against plain split learning's: ADC and C3-SL shrink the server's batch, the
# others run the full server half on every sample
STEP_COST = {"adc": 0.35, "c3sl": 0.35, "fedlite": 1.2}


def cost(job: list[str]) -> float:
    """Relative cost of a job: the epochs its byte budget buys (about 1/compression) times its step cost."""
    opts = dict(o.split("=", 1) for o in job if "=" in o)
    method = next((n for n in STEP_COST if f"cpu/main_{n}" in opts.get("+experiment", "")), None)
    if "adc_" in opts.get("+experiment", ""):
        method = "adc"
    ratio = float(opts.get("method.compression", opts.get("method.batch_ratio", opts.get("method.token_ratio", 1.0))))
    if "method.q" in opts:
        ratio = 0.03 * int(opts["method.q"]) / 8 + 0.03  # FedLite: codes plus the codebook, as measured
    return STEP_COST.get(method, 1.0) / ratio


LOCK = ".running"  # in a job's run directory while a process of this machine runs it: its PID


def claim(lock: Path) -> bool:
    """Take a job's lock, unless a live process holds it (two runs of this script on one folder never run
    one job twice; a lock left by a process that died is taken over)."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text()), 0)
                return False  # its process is alive
            except PermissionError:  # alive, another user's
                return False
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: take it over
                continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset.root: the folder that holds cifar-100-python/")
    ap.add_argument("--out", type=Path, default=Path("runs/cpu"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--jobs", type=int, default=2, help="jobs at a time (one PyTorch thread each)")
    ap.add_argument("--only", default=None, help="comma-separated experiment names (default: all)")
    ap.add_argument("--measure", action="store_true", help="only measure finished runs that lack the final "
                    "evaluation through the method (eval.also=[compressed]), from their last checkpoint, no training")
    ap.add_argument("overrides", nargs="*", help="more overrides for every job (a quick check: train.max_steps=3)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else EXPERIMENTS
    queue = []
    for seed in args.seeds.split(","):
        for name in names:
            fixed = [f"+experiment=cpu/{name}", f"dataset.root={args.data}", f"seed={seed}", *args.overrides]
            for job in jobs(fixed):
                # a path Hydra's override parser takes as it is: no '=' or ','
                tag = "_".join(o.removeprefix("method.").replace("=", "-") for o in job
                               if o not in fixed[:2] and o not in args.overrides)
                queue.append((job, args.out / name / tag))
    seeds = args.seeds.split(",")
    queue.sort(key=lambda item: (seeds.index(dict(o.split("=", 1) for o in item[0] if "=" in o)["seed"]), cost(item[0])))
    if args.measure:
        queue = [(job + ["train.resume=true", "eval.also=[compressed]"], d) for job, d in queue
                 if (d / "summary.json").is_file() and "final_val_acc_compressed" not in (d / "summary.json").read_text()]
        todo = queue
    else:
        todo = [(job, d) for job, d in queue if not (d / "summary.json").is_file()]
    print(f"{len(queue)} jobs, {len(queue) - len(todo)} done already, {len(todo)} to run", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    splitvit = str(Path(sys.executable).with_name("splitvit"))

    def run(item) -> int:
        job, run_dir = item
        if (run_dir / "summary.json").is_file() and not args.measure:  # finished meanwhile (by another run of this script)
            return 0
        run_dir.mkdir(parents=True, exist_ok=True)
        if not claim(run_dir / LOCK):
            print(f"skipped: {run_dir} is running in process {(run_dir / LOCK).read_text().strip()}", flush=True)
            return 0
        try:
            resumed = not args.measure and (run_dir / "checkpoints" / "clients.pt").is_file()
            t0 = time.time()
            with open(run_dir / "stdout.log", "a" if args.measure or resumed else "w") as log:
                rc = subprocess.call([splitvit, "train", *job, *(["train.resume=true"] if resumed else []), f"run_dir={run_dir}"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            (run_dir / LOCK).unlink(missing_ok=True)
        print(f"{'ok ' if rc == 0 else f'rc={rc}'} {time.time() - t0:7.0f} s  {run_dir}{' (resumed)' if resumed else ''}",
              flush=True)
        return rc

    with ThreadPoolExecutor(args.jobs) as pool:
        failed = sum(rc != 0 for rc in pool.map(run, todo))
    print(f"{failed} failed" if failed else "all done", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
