"""Training throughput on a GPU: images/s of split DeiT-Tiny at 224x224 (split after block 3, batch 128),
``none`` against ADC at 0.1, in float32 and under bf16 autocast (K-means stays float32).

The full step runs: client forward, compression, serialisation of the wire message, the server's
checks, forward, loss, backward and step, the gradient back, the client's backward and step.

    python benchmarks/gpu_throughput.py [--batch 128] [--steps 30] [--model deit_tiny_patch16_224]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module

from splitvit.train.pair import build_pair


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(cfg, steps: int, device: torch.device, num_classes: int = 100) -> float:
    client, _, _, vit = build_pair(cfg, num_classes, device)
    B = cfg.train.batch_size
    images = torch.randn(B, 3, vit.img_size, vit.img_size, device=device)
    labels = torch.randint(0, num_classes, (B,), device=device)
    warm = min(5, steps)
    for step in range(warm):  # warm-up: kernels, allocator, Adam state
        client.train_step(images, labels, step)
    synchronize(device)
    t0 = time.perf_counter()
    for step in range(warm, warm + steps):
        client.train_step(images, labels, step)
    synchronize(device)
    return steps * B / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--split", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, seconds (CI runs every benchmark so; "
                    "the numbers mean nothing)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.batch, args.split, args.steps = "vit_mini_patch4_32", 4, 2, 1
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU; none is visible here (--smoke runs it on the CPU)")
    else:
        device = torch.device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; {args.model}, batch {args.batch}, "
          f"split after block {args.split}, {args.steps} timed steps")
    print(f"{'method':<16} {'precision':<10} {'images/s':>9}")
    for method in (["method=none"], ["method=adc", "method.compression=0.1"]):
        for precision in ("fp32", "bf16"):
            with initialize_config_module("splitvit.conf", version_base=None):
                cfg = compose("config", overrides=[*method, f"model={args.model}", f"train.batch_size={args.batch}",
                                                   f"split.index={args.split}", f"train.precision={precision}", f"device={device.type}"])
            label = cfg.method.name + (f" {cfg.method.compression}" if cfg.method.name == "adc" else "")
            print(f"{label:<16} {precision:<10} {images_per_s(cfg, args.steps, device):9.1f}")


if __name__ == "__main__":
    main()
