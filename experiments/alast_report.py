"""ALaST's cost table from ``experiments/alast.sh``'s seed-0 runs (docs: "ALaST"): time, FLOPs and memory
of a training step of the model in one piece, against full fine-tuning.

    python experiments/alast_report.py results/cpu_protocol/alast

Writes ``report.md`` (the table) into the same folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETTINGS = {"full": "full fine-tuning", "alast_K4": "ALaST, K = 4, b0 = 1 (the paper's defaults)",
            "alast_K6_b0.75": "ALaST, K = 6, b0 = 0.75, b_min = 0.5", "alast_K4_b0.5": "ALaST, K = 4, b0 = b_min = 0.5"}


def cost(summary: dict) -> tuple[float, float, float]:
    """(ms per step, FLOPs per step, autograd's saved MB) of the run's profile of the model in one piece."""
    p = summary["profile"]["whole"]
    return p["ms"]["total"], p["flops"]["total"], p["peak_mb"]


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cpu_protocol/alast")
    runs = {name: json.loads((root / name / "summary.json").read_text()) for name in SETTINGS
            if (root / name / "summary.json").is_file()}
    lines = ["| setting | final acc | ms / step | GFLOP / step | saved activations MB | vs full: time, FLOPs, memory |",
             "| --- | --: | --: | --: | --: | --- |"]
    full = cost(runs["full"])
    for name, label in SETTINGS.items():
        if name not in runs:
            continue
        ms, flops, mb = cost(runs[name])
        versus = "" if name == "full" else f"{full[0] / ms:.2f}x, {full[1] / flops:.2f}x, {full[2] / mb:.2f}x"
        lines.append(f"| {label} | {runs[name]['final_val_acc']:.4f} | {ms:.1f} | {flops / 1e9:.2f} | {mb:.1f} | {versus} |"
                     .replace("|  |", "| |"))
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
