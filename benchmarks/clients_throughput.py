"""Server throughput with 1, 2 and 4 clients over gRPC on loopback, in training steps per second summed
over the clients (README, "Several clients").

    python benchmarks/clients_throughput.py [--clients 1,2,4] [--method none] [--steps 30]

Each point is a real run: one ``splitvit serve clients.num=N`` process and N ``splitvit client``
processes (SplitFed-V2, ``clients.local_steps`` steps a round), each with one PyTorch thread. The rate
is all clients' steps over the longest client's wall time (from its first step to its summary; start-up
not counted). SplitFed-V2 applies the clients' messages to the one server half in a seeded order, so
the server's compute is serial by design; what may overlap is each client's own compute and every
transfer with the server's compute for another client. On a machine with fewer cores than processes
the clients also share the cores, which caps the gain.
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

COMMON = ["train.batch_size=64", "train.progress=false", "eval.max_batches=1", "eval.batch_size=64", "clients.scheme=splitfed_v2",
          "--insecure"]


def run(n: int, method: list[str], steps: int, local: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # the cap is on steps, all clients together
    args = [*COMMON, *method, f"clients.num={n}", f"clients.local_steps={local}", f"train.max_steps={steps * n}"]
    serve_log = (out / "serve.out").open("w")
    server = subprocess.Popen([sys.executable, "-m", "splitvit", "serve", *args, "listen=127.0.0.1:0", "link.once=true",
                               f"run_dir={out / 'server'}"], stdout=serve_log, stderr=subprocess.STDOUT, env=env)
    address = None
    while address is None:
        time.sleep(0.1)
        for line in (out / "serve.out").read_text().splitlines():
            if "listening on " in line:
                address = line.split("listening on ")[1].split()[0]
        if server.poll() is not None:
            raise SystemExit((out / "serve.out").read_text())
    clients = [subprocess.Popen([sys.executable, "-m", "splitvit", "client", *args, f"server={address}",
                                 f"clients.id={i}", f"run_dir={out / f'c{i}'}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env) for i in range(n)]
    for c in clients:
        c.wait()
    server.wait(timeout=60)
    summaries = [json.loads((out / f"c{i}" / "summary.json").read_text()) for i in range(n)]
    total = sum(s["steps"] for s in summaries)
    wall = max(s["wall_s"] for s in summaries)
    return {"clients": n, "steps": total, "wall_s": wall, "steps_s": total / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--method", default="none", help="none, or adc (at compression 0.1)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per client")
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.steps, args.local_steps = "1", 2, 1
    method = ["method=none"] if args.method == "none" else ["method=adc", "method.compression=0.1"]
    print(f"SplitFed-V2 over gRPC on loopback, vit_mini_patch4_32 split after block 2, batch 64, method {args.method}, "
          f"{args.steps} steps per client, {os.cpu_count()} cores")
    print(f"{'clients':>7} {'steps':>6} {'wall s':>7} {'steps/s (all clients)':>22} {'vs 1 client':>12}")
    base = None
    for n in map(int, args.clients.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            r = run(n, method, args.steps, args.local_steps, Path(tmp))
        base = base or r["steps_s"]
        print(f"{r['clients']:>7} {r['steps']:>6} {r['wall_s']:>7.1f} {r['steps_s']:>22.2f} {r['steps_s'] / base:>11.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
