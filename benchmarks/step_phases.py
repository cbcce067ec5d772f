"""What one training step costs each side, phase by phase (README, "What a step costs the edge device").

    python benchmarks/step_phases.py [--steps 4] [--threads 2]

Two geometries: DeiT-Tiny (224 x 224, 16 x 16 patches, split after block 3, batch 128) and the CPU
protocol's small ViT (vit_nano_patch8_32, split after block 2, batch 128), each with plain split
learning (``method=none``) and ADC at 0.1. Every point is a real in-process run with
``train.profile=true`` on random-looking images (the embedded digits, resized): the first step counts
FLOPs, the others are timed. Prints a table per geometry, and K-means' share of the client's step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from splitvit.train import fit

GEOMETRIES = {
    "DeiT-Tiny, 224, split 3, batch 128": ["model=deit_tiny_patch16_224", "split.index=3"],
    "CPU protocol's ViT (vit_nano_patch8_32), split 2, batch 128": ["model=vit_nano_patch8_32", "split.index=2"],
}
METHODS = {"none": ["method=none"], "ADC 0.1": ["method=adc", "method.compression=0.1"]}
CLIENT = ["forward", "forward/cls_attention", "compress", "compress/kmeans", "serialize", "wait", "deserialize",
          "decompress", "backward", "step", "total"]
SERVER = ["decode", "forward", "backward", "step", "encode", "total"]


def profile(overrides: list[str], steps: int) -> dict:
    from hydra import compose as hcompose, initialize_config_module

    with initialize_config_module("splitvit.conf", version_base=None):
        cfg = hcompose("config", overrides=[*overrides, "train.batch_size=128", f"train.max_steps={steps}",
                                            f"train.eval_every={steps}", "eval.max_batches=1", "eval.batch_size=128",
                                            "train.profile=true", "train.progress=false", "train.checkpoint=none"])
    with tempfile.TemporaryDirectory() as d:
        return fit(cfg, Path(d))["profile"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="steps per run; the first counts FLOPs, the rest are timed")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw profiles here")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.steps = 2
        GEOMETRIES.clear()
        GEOMETRIES["smoke: vit_mini_patch4_32 of depth 3, split 2, batch 128"] = [
            "model=vit_mini_patch4_32", "model.depth=3", "model.embed_dim=32", "model.num_heads=2", "split.index=2"]
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = {}
    for geometry, g in GEOMETRIES.items():
        results = {name: profile(g + m, args.steps) for name, m in METHODS.items()}
        raw[geometry] = results
        print(f"\n{geometry}: ms per step (GFLOP per step), {torch.get_num_threads()} threads")
        print(f"{'phase':28s}" + "".join(f"{name:>26s}" for name in results))
        for side, phases in (("client", CLIENT), ("server", SERVER)):
            for ph in phases:
                cells = []
                for r in results.values():
                    ms, fl = r[side]["ms"].get(ph), r[side]["flops"].get(ph)
                    cells.append("-" if ms is None else f"{ms:10.1f} ({(fl or 0) / 1e9:8.3f})")
                print(f"{side + ' ' + ph:28s}" + "".join(f"{c:>26s}" for c in cells))
        adc = results["ADC 0.1"]["client"]["ms"]
        print(f"K-means: {adc['compress/kmeans']:.1f} ms of the client's {adc['total'] - adc['wait']:.1f} ms of its own work "
              f"({adc['compress/kmeans'] / (adc['total'] - adc['wait']):.1%}); CLS attention row: "
              f"{adc['forward/cls_attention']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
