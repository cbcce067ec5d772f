"""Run an experiment from Python: the config `splitvit train` would run, then `fit`, then its summary.

    python examples/train_in_python.py [--smoke]

The same overrides as on the command line; the run directory gets the same run files
(config.yaml, metrics.jsonl, summary.json).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from splitvit.train import compose, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few steps (CI runs every example so)")
    args = ap.parse_args()
    steps = 4 if args.smoke else 200
    with tempfile.TemporaryDirectory() as d:
        for method in (["method=adc", "method.compression=0.1"], ["method=none"]):
            quick = ["eval.max_batches=1"] if args.smoke else []  # a quick look at the test set
            cfg = compose(*method, f"train.max_steps={steps}", "train.progress=false", *quick)
            s = fit(cfg, Path(d) / method[0].split("=")[1])
            print(f"{s['method']:5s} {s['steps']} steps: accuracy {s['final_val_acc']:.4f}, "
                  f"{(s['bytes_up'] + s['bytes_down']) / 1e6:.1f} MB on the wire, measured compression {s['compression_measured']:.4f}")


if __name__ == "__main__":
    main()
