"""One split-learning training step (method=none, through the wire) against the same ViT trained in one piece.

The split step pays for serialising the activations up and the gradient down, the schema checks on
both, and the detach at the cut. Everything else is the same arithmetic.

    python benchmarks/split_overhead.py [--model deit_tiny_patch16_224] [--batch 32] [--repeat 5] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hydra import compose, initialize_config_module

from splitvit.models import create_model
from splitvit.train.pair import build_pair


def median_s(step, repeat):
    step()
    step()  # warm-up: allocator, Adam state
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--split", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.batch, args.split, args.repeat = "vit_mini_patch4_32", 4, 2, 1

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224 if "224" in args.model else 32, 224 if "224" in args.model else 32)
    y = torch.randint(0, 100, (args.batch,))

    whole = create_model(args.model, num_classes=100)
    opt = torch.optim.Adam(whole.parameters(), 1e-4)

    def one_piece():
        loss = F.cross_entropy(whole(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with initialize_config_module("splitvit.conf", version_base=None):
        cfg = compose("config", overrides=["method=none", f"model={args.model}", f"train.batch_size={args.batch}",
                                           f"split.index={args.split}", "train.lr=1e-4"])
    client, _, progress, _ = build_pair(cfg, 100)
    steps = iter(range(10**9))

    def split_step():
        client.train_step(x, y, next(steps))

    # interleave so that both see the same machine state
    a, b = [], []
    for _ in range(args.repeat):
        a.append(median_s(one_piece, 1))
        b.append(median_s(split_step, 1))
    t_whole, t_split = statistics.median(a), statistics.median(b)
    train = progress.counts("train")
    mb = (train.up + train.down) / train.messages / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, batch {args.batch}, split after block {args.split}")
    print(f"one piece:            {t_whole * 1e3:9.1f} ms/step")
    print(f"split, method=none:   {t_split * 1e3:9.1f} ms/step  ({mb:.1f} MB on the wire per step, both ways)")
    print(f"overhead:             {100 * (t_split / t_whole - 1):+9.1f} %")


if __name__ == "__main__":
    main()
