"""ALaST's tables from ``experiments/alast.sh``'s runs (docs: "ALaST"): (1) the time, FLOPs and memory of a
training step of the model in one piece against full fine-tuning, seed 0; (2) the paper's description against
the co-author's code's choices, seeds 0 and 1 (``seed1/``): accuracy, where the budgets end, tokens per block,
FLOPs and how often each block trained.

    python experiments/alast_report.py results/cpu_protocol/alast

Writes ``report.md`` (the tables) into the same folder.
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


VARIANTS = {"alast_K4": "the paper's description (`importance=sample`)", "alast_K4_batch": "`importance=batch`",
            "alast_K4_research": "all four of the code's choices"}


def variants(root: Path) -> list[str]:
    """Table 2: each variant over seeds 0 (``root``) and 1 (``root/seed1``), from the last row of metrics.jsonl."""
    lines = ["| setting | final acc, seed 0 / 1 | budgets at the end | tokens per block after the first | "
             "GFLOP / step, seed 0 / 1 | blocks' shares of the steps |", "| --- | --: | --- | --- | --: | --- |"]
    for name, label in VARIANTS.items():
        last = [json.loads((d / name / "metrics.jsonl").read_text().splitlines()[-1]) for d in (root, root / "seed1")
                if (d / name / "metrics.jsonl").is_file()]
        if not last:
            continue
        state = [row["alast"]["whole"] for row in last]
        budgets = [b for s in state for b in s["budgets"]]
        tokens = sorted({t for s in state for t in s["tokens"][1:]})
        shares = [x for s in state for x in s["trained_share"]]
        acc = " / ".join(f"{row['val_acc']:.4f}" for row in last)
        gflop = " / ".join(f"{row['profile']['whole']['flops']['total'] / 1e9:.2f}" for row in last)
        lines.append(f"| {label} | {acc} | {min(budgets):.4g}-{max(budgets):.4g} | {', '.join(map(str, tokens))} | "
                     f"{gflop} | {min(shares):.0%}-{max(shares):.0%} |")
    return lines


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
    lines += ["", *variants(root)]
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
