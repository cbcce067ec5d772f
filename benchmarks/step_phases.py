"""What one training step costs each side, phase by phase (docs: "Benchmarks").

    python benchmarks/step_phases.py [--steps 5] [--threads 1] [--deit]

The CPU protocol's ViT (vit_nano_patch8_32, split after block 2, batch 128) with plain split learning
(``method=none``), ADC at 0.1, 4-bit quantisation and FedLite (q = 32); ``--deit`` adds DeiT-Tiny (224 x 224,
16 x 16 patches, split after block 3). Every point is a real in-process run with ``train.profile=true``
on the embedded digits, resized: the first step counts FLOPs, the others are timed. Nested phases are
indented under their parent: the client's ``deserialize`` is the header check against the schema
(``check``), safetensors' load (``load``) and the finite and range checks of the values (``values``).
In process, the client's ``wait`` is the server's whole step.
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
    "CPU protocol's ViT (vit_nano_patch8_32), split 2, batch 128": ["model=vit_nano_patch8_32", "split.index=2"],
}
DEIT = ("DeiT-Tiny, 224, split 3, batch 128", ["model=deit_tiny_patch16_224", "split.index=3"])
METHODS = {"none": ["method=none"], "ADC 0.1": ["method=adc", "method.compression=0.1"],
           "quant 4-bit": ["method=quant", "method.bits=4"], "FedLite q=32": ["method=fedlite", "method.q=32"]}


def phases(results: dict, side: str) -> list[str]:
    """Every phase any method recorded on ``side``, parents before their children, in the order they run."""
    names: list[str] = []
    for r in results.values():
        for ph in r[side]["ms"]:
            if ph not in names and ph != "total":
                names.append(ph)
    order = {n: i for i, n in enumerate(names)}
    return sorted(names, key=lambda n: [order.get("/".join(n.split("/")[: i + 1]), 0) for i in range(n.count("/") + 1)]) + ["total"]


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
    ap.add_argument("--steps", type=int, default=5, help="steps per run; the first counts FLOPs, the rest are timed")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--deit", action="store_true", help="also DeiT-Tiny at 224 x 224 (minutes per method)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw profiles here")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.steps = 2
        GEOMETRIES.clear()
        GEOMETRIES["smoke: vit_mini_patch4_32 of depth 3, split 2, batch 128"] = [
            "model=vit_mini_patch4_32", "model.depth=3", "model.embed_dim=32", "model.num_heads=2", "split.index=2"]
    elif args.deit:
        GEOMETRIES[DEIT[0]] = DEIT[1]
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = {}
    for geometry, g in GEOMETRIES.items():
        results = {name: profile(g + m, args.steps) for name, m in METHODS.items()}
        raw[geometry] = results
        print(f"\n{geometry}: ms per step (GFLOP per step), {torch.get_num_threads()} threads")
        print(f"{'phase':30s}" + "".join(f"{name:>22s}" for name in results))
        for side in ("client", "server"):
            for ph in phases(results, side):
                cells = []
                for r in results.values():
                    ms, fl = r[side]["ms"].get(ph), r[side]["flops"].get(ph)
                    cells.append("-" if ms is None else f"{ms:8.1f} ({(fl or 0) / 1e9:7.3f})")
                label = "  " * ph.count("/") + ph.rsplit("/", 1)[-1]
                print(f"{side[0]} {label:28s}" + "".join(f"{c:>22s}" for c in cells))
        for name, r in results.items():
            c = r["client"]["ms"]
            own = c["total"] - c["wait"]
            km = c.get("compress/kmeans", 0.0) + r["server"]["ms"].get("encode/kmeans", 0.0)
            print(f"{name}: step {c['total']:.1f} ms (client's own work {own:.1f}, server {r['server']['ms']['total']:.1f}); "
                  f"K-means, both sides: {km:.1f} ms ({km / c['total']:.1%} of the step)")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
