"""Training steps over gRPC on loopback (server in another process) against the in-process link.

Both links carry the same wire messages; the difference is the transport: protobuf framing, HTTP/2,
the kernel's loopback, and the two processes sharing the CPU. Prints steps/s, wire MB/s (both
directions) and the gRPC framing the messages gained, for ``none`` and ADC at 0.1.

    python benchmarks/link_throughput.py [--model vit_mini_patch4_32] [--batch 128] [--steps 30] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from splitvit.link import CountBytes, Exchange
from splitvit.train.pair import build_pair
from splitvit.train.remote import connect
from splitvit.train.server import server_digest
from splitvit.train.state import Progress


def run(cfg, link_kind: str, steps: int, num_classes: int = 100) -> dict:
    client, session, progress, vit = build_pair(cfg, num_classes)
    if link_kind == "grpc":  # the same client, its messages to a `splitvit serve` process instead
        # the server plans the client's round from its samples: one round of every step timed here
        samples = cfg.train.batch_size * (steps + 3)
        link = connect(cfg, Path(tempfile.mkdtemp()), Progress(), num_classes,
                       server_digest(session.half.model, session.half.codec), samples=samples)
        client.exchange = Exchange(link, [CountBytes(progress)])
    link = client.exchange.link
    g = torch.Generator().manual_seed(0)
    B = cfg.train.batch_size
    images = torch.randn(B, 3, vit.img_size, vit.img_size, generator=g)
    labels = torch.randint(0, num_classes, (B,), generator=g)
    for step in range(3):  # warm-up: allocator, Adam state, the connection
        client.train_step(images, labels, step)
    up0, down0 = progress.bytes_up, progress.bytes_down
    f0 = progress.framing_up + progress.framing_down
    t0 = time.perf_counter()
    for step in range(3, 3 + steps):
        client.train_step(images, labels, step)
    dt = time.perf_counter() - t0
    wire = progress.bytes_up - up0 + progress.bytes_down - down0
    framing = progress.framing_up + progress.framing_down - f0
    link.close()
    return {"steps_s": steps / dt, "mb_s": wire / dt / 1e6, "mb_step": wire / steps / 1e6, "framing": framing / wire}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_mini_patch4_32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--split", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.steps = 4, 2
    print(f"model {args.model}, batch {args.batch}, split after block {args.split}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads; gRPC server in a separate process on 127.0.0.1")
    print(f"{'method':<10} {'link':<10} {'steps/s':>8} {'MB/step':>8} {'wire MB/s':>10} {'framing':>9} {'vs in-process':>14}")
    methods = (["method=none"], ["method=adc", "method.compression=0.1"])
    for method in methods[:1] if args.smoke else methods:
        base = None
        for link in ("inprocess", "grpc"):
            with initialize_config_module("splitvit.conf", version_base=None):
                cfg = compose("config", overrides=[
                    *method, f"model={args.model}", f"train.batch_size={args.batch}", f"split.index={args.split}",
                    f"link={link}", "dataset=cifar100",
                ])
            r = run(cfg, link, args.steps)
            base = base or r
            print(f"{cfg.method.name:<10} {link:<10} {r['steps_s']:8.2f} {r['mb_step']:8.2f} {r['mb_s']:10.1f} "
                  f"{100 * r['framing']:8.4f}% {r['steps_s'] / base['steps_s']:13.2f}x")


if __name__ == "__main__":
    main()
