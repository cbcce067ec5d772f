"""The same experiment on splitvit's engine and on Flower's simulation engine (``clients.engine=flower``), and
many clients on Flower's: wall time, steps per second and the peak memory of all the run's processes (the run
and every process it started: Ray's, its ClientApp actors). Needs the ``flower`` extra.

    python benchmarks/flower/engines.py [--smoke] [--many 50]

The runs are ``splitvit train`` processes on the embedded digits with a small ViT, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = ["model.embed_dim=64", "model.depth=3", "model.num_heads=2", "train.progress=false", "eval.max_batches=1",
         "eval.batch_size=64", "train.batch_size=16"]


def tree_rss_mb(root: int) -> float:
    """The resident memory of process ``root`` and all its descendants, MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1e6


def run(args: list[str]) -> dict:
    """One ``splitvit train`` run: its summary, wall seconds and peak memory of its process tree."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "splitvit", "train", *SMALL, *args, f"run_dir={tmp}/run"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.5)
        wall = time.perf_counter() - start
        out = proc.stdout.read()
        if proc.returncode:
            raise SystemExit(f"splitvit train {' '.join(args)} failed:\n{out[-3000:]}")
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return {"summary": summary, "wall_s": wall, "peak_mb": peak}


def line(name: str, r: dict) -> str:
    s = r["summary"]
    return (f"{name:<44} {s['steps']:>6} {r['wall_s']:>8.1f} {s['steps'] / r['wall_s']:>8.2f} {r['peak_mb']:>9.0f} "
            f"{s.get('flower_messages', 0):>9} {(s.get('flower_control_bytes_up', 0) + s.get('flower_control_bytes_down', 0)) / 1e3:>8.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one tiny run on each engine (CI)")
    ap.add_argument("--many", type=int, default=50, help="clients of the many-clients run on Flower (0: none)")
    a = ap.parse_args()
    rounds, steps = (1, 1) if a.smoke else (4, 4)
    same = ["clients.num=3", "clients.scheme=splitfed_v2", f"clients.rounds={rounds}", f"clients.local_steps={steps}"]
    print(f"{'run':<44} {'steps':>6} {'wall s':>8} {'steps/s':>8} {'peak MB':>9} {'fl. msgs':>9} {'fl. kB':>8}")
    results = {engine: run([*same, f"clients.engine={engine}"]) for engine in ("splitvit", "flower")}
    for engine, r in results.items():
        print(line(f"3 clients, splitfed_v2, engine={engine}", r), flush=True)
    a_, b_ = (results[e]["summary"] for e in ("splitvit", "flower"))
    same_result = all(a_[k] == b_[k] for k in ("steps", "bytes_up", "bytes_down", "final_val_acc"))
    print(f"same steps, bytes up and down, final accuracy on both engines: {same_result}")
    if a.many and not a.smoke:
        many = run([f"clients.num={a.many}", "clients.fraction=0.1", "clients.scheme=splitfed_v2", "clients.rounds=3",
                    "clients.local_steps=2", "clients.min_samples=16", "clients.engine=flower"])
        print(line(f"{a.many} clients (5 a round), 3 rounds, engine=flower", many), flush=True)
    return 0 if same_result else 1


if __name__ == "__main__":
    sys.exit(main())
