"""The runs given 10 uncompressed epochs of bytes (docs: results, "The budget, checked" and "Most accuracy per
byte"): the test accuracy of each run at its evaluation nearest the bytes (both ways) of each of plain split
learning's evaluations, and the best it reached.

    python experiments/budget_report.py results/cpu_protocol/ten_epochs

Prints the table (markdown) of every run under the folder (a folder with a ``summary.json``), plain split
learning (``method=none``, no codec) first; its evaluations give the columns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def evaluations(run: Path) -> list[tuple[float, float, float]]:
    """(MB sent both ways, test accuracy, epochs) of each evaluation of the run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [((r["bytes_up"] + r["bytes_down"]) / 1e6, r["val_acc"], r["epoch"]) for r in rows if r.get("val_acc") is not None]


def label(summary: dict) -> str:
    """``none``, ``ADC, `xi` = 0.1``, ``quant, 4 bits``, each with ``+ int8`` for a codec."""
    method, options = summary["method"], summary.get("method_options") or {}
    name = {"adc": "ADC", "topk": "Top-K"}.get(method, method)
    if method == "quant":
        name += f", {options['bits']} bits"
    elif "compression" in options and method != "none":
        name += f", `xi` = {options['compression']:g}" if method == "adc" else f" {options['compression']:g}"
    codec = summary.get("codec") or "none"
    return name + (f" + `{codec}`" if codec != "none" else "")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cpu_protocol/ten_epochs")
    runs = {}
    for s in sorted(root.glob("*/summary.json")):
        summary = json.loads(s.read_text())
        runs[label(summary)] = evaluations(s.parent)
    if "none" not in runs:
        print(f"budget_report: no run of method=none without a codec under {root}", file=sys.stderr)
        return 2
    order = ["none", *sorted(k for k in runs if k != "none")]
    points = [mb for mb, _, _ in runs["none"]]
    header = [f"{mb:,.0f} MB" for mb in points]
    header[0] += f" ({runs['none'][0][2]:g} epochs)"
    header[-1] += f" ({runs['none'][-1][2]:g} epochs)"
    lines = ["| bytes sent (both ways) | " + " | ".join(header) + " | best |", "| --- |" + " --: |" * (len(points) + 1)]
    for name in order:
        ev = runs[name]
        nearest = [min(ev, key=lambda e, mb=mb: abs(e[0] - mb)) for mb in points]
        lines.append(f"| {name} | " + " | ".join(f"{e[1]:.4f}" for e in nearest) + f" | {max(e[1] for e in ev):.4f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
