"""Fine-tuning throughput: the ViT trained in one piece against split learning through the wire, in one run.

The split step pays for the cut (the detach, the server's own forward and backward of its blocks), the
method's compression both ways, serialising the activations up and the gradient down, and the checks of
each message (schema, finite values). Everything else is the same arithmetic. Defaults: the CPU
protocol's model and recipe (vit_nano_patch8_32, 50 classes, batch 128, split after block 2, Adam), the
steps interleaved so that every setting sees the same machine state.

    python benchmarks/split_overhead.py [--model vit_nano_patch8_32] [--batch 128] [--split 2] [--repeat 15]
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

METHODS = {"none": ["method=none"], "ADC 0.1": ["method=adc", "method.compression=0.1"],
           "quant 4-bit": ["method=quant", "method.bits=4"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_nano_patch8_32")
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--split", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15, help="timed steps of each setting (after 2 warm-up steps)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.batch, args.repeat = "vit_mini_patch4_32", 8, 1

    torch.manual_seed(0)
    size = 224 if "224" in args.model else 32
    x = torch.randn(args.batch, 3, size, size)
    y = torch.randint(0, args.classes, (args.batch,))

    whole = create_model(args.model, num_classes=args.classes)
    opt = torch.optim.Adam(whole.parameters(), 1e-4)

    def one_piece():
        loss = F.cross_entropy(whole(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps, ledgers = {"one piece": one_piece}, {}
    with initialize_config_module("splitvit.conf", version_base=None):
        for name, overrides in METHODS.items():
            cfg = compose("config", overrides=[*overrides, f"model={args.model}", f"train.batch_size={args.batch}",
                                               f"split.index={args.split}", "train.lr=1e-4"])
            client, _, progress, _ = build_pair(cfg, args.classes)
            counter = iter(range(10**9))
            steps[name] = lambda client=client, counter=counter: client.train_step(x, y, next(counter))
            ledgers[name] = progress

    for step in steps.values():  # warm-up: allocator, Adam state
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeat):  # interleaved, so that all settings see the same machine state
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["one piece"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, {args.classes} classes, "
          f"batch {args.batch}, split after block {args.split}; median of {args.repeat} steps each")
    print(f"{'setting':14s} {'ms/step':>9s} {'images/s':>9s} {'vs one piece':>13s} {'MB/step (up+down)':>18s}")
    for name, t in times.items():
        s = statistics.median(t)
        mb = "-"
        if name in ledgers:
            train = ledgers[name].counts("train")
            mb = f"{(train.up + train.down) / train.messages / 1e6:.3f}"
        print(f"{name:14s} {s * 1e3:9.1f} {args.batch / s:9.0f} {100 * (s / base - 1):+12.1f}% {mb:>18s}")


if __name__ == "__main__":
    main()
