"""The from-scratch tables of the docs' results page from ``experiments/from_scratch.sh``'s runs: (1) what each
run trained and sent, and its final accuracy; (2) time to accuracy over the modelled 20 Mbit/s link (compute
measured, the link's seconds computed from the bytes on the wire).

    python experiments/scratch_report.py runs/scratch

Prints the two tables (markdown).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = "dataset=cifar100 dataset.root=/path/to/data dataset.augment=none dataset.normalize=dataset"
RUNS = {  # run folder: (dataset, what, the command's overrides)
    "digits_adc": ("digits", "ADC, xi = 0.1", "*(no overrides: the default)*"),
    "digits_none": ("digits", "none, same epochs", "`method=none`"),
    "digits_none_budget4": ("digits", "none, about ADC's bytes", "`method=none train.budget_epochs=4`"),
    "cifar100_none": ("CIFAR-100", "none, budget 1 epoch", f"`{DATA} method=none train.budget_epochs=1`"),
    "cifar100_adc": ("CIFAR-100", "ADC, xi = 0.1, same budget", f"`{DATA} train.budget_epochs=1`"),
}
TIMED = {"digits_adc": "ADC, xi = 0.1", "digits_none": "none"}
LEVELS = (0.5, 0.7, 0.8)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/scratch")
    lines = ["| dataset | method | command (`splitvit train ...`) | steps | epochs | MB up | MB down | "
             "measured compression | final acc |", "| --- | --- | --- | --: | --: | --: | --: | --: | --: |"]
    for name, (dataset, what, command) in RUNS.items():
        if not (root / name / "summary.json").is_file():
            continue
        s = json.loads((root / name / "summary.json").read_text())
        lines.append(f"| {dataset} | {what} | {command} | {s['steps']:,} | {s['epochs']:.4g} | {s['bytes_up'] / 1e6:,.1f} | "
                     f"{s['bytes_down'] / 1e6:,.1f} | {s['compression_measured']:.4f} | {s['final_val_acc']:.4f} |")
    lines += ["", "| method | compute s | link s | " + " | ".join(f"time to {x}" for x in LEVELS) + " | final acc |",
              "| --- | --: | --: | " + " | ".join("--:" for _ in LEVELS) + " | --: |"]
    for name, what in TIMED.items():
        if not (root / name / "summary.json").is_file():
            continue
        evals = [r for r in rows(root / name) if r.get("val_acc") is not None]
        last = evals[-1]
        reached = [next((f"{r['time_s']:,.0f} s" for r in evals if r["val_acc"] >= x), "-") for x in LEVELS]
        lines.append(f"| {what} | {last['wall_s']:,.0f} | {last['link_s']:,.0f} | " + " | ".join(reached)
                     + f" | {last['val_acc']:.4f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
