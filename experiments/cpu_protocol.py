"""Run the CPU protocol's fine-tuning comparison (DESIGN.md), a few jobs at a time, seed by seed.

    python experiments/cpu_protocol.py --data /path/to/data --out runs/cpu [--seeds 0,1] [--jobs 2]

Every job is one ``splitvit train`` of a ``cpu/`` experiment (the same jobs as
``splitvit train --multirun +experiment=cpu/<name>``, which does the same one experiment at a
time); each goes to ``OUT/<experiment>/<its overrides>``, with one PyTorch thread per job. A job
whose ``summary.json`` exists is skipped, so the script can be stopped and started again. Seed 0 of
every experiment runs before seed 1. Then: ``splitvit report OUT --out docs/cpu_protocol``.
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

# cheapest and most telling first: a session that ends early has the main curve
EXPERIMENTS = (
    "main_none", "main_adc", "main_c3sl", "main_topk", "main_randtopk", "main_bottlenet", "main_quant",
    "adc_merge_only", "adc_select_only", "adc_feature", "main_fedlite", "main_lowrank",
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset.root: the folder that holds cifar-100-python/")
    ap.add_argument("--out", type=Path, default=Path("runs/cpu"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--jobs", type=int, default=2, help="jobs at a time (one PyTorch thread each)")
    ap.add_argument("--only", default=None, help="comma-separated experiment names (default: all)")
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
    todo = [(job, d) for job, d in queue if not (d / "summary.json").is_file()]
    print(f"{len(queue)} jobs, {len(queue) - len(todo)} done already, {len(todo)} to run", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    splitvit = str(Path(sys.executable).with_name("splitvit"))

    def run(item) -> int:
        job, run_dir = item
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(run_dir / "stdout.log", "w") as log:
            rc = subprocess.call([splitvit, "train", *job, f"run_dir={run_dir}"], stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{'ok ' if rc == 0 else f'rc={rc}'} {time.time() - t0:7.0f} s  {run_dir}", flush=True)
        return rc

    with ThreadPoolExecutor(args.jobs) as pool:
        failed = sum(rc != 0 for rc in pool.map(run, todo))
    print(f"{failed} failed" if failed else "all done", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
