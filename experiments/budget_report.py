"""Plain split learning against ADC at 0.1 given 10 uncompressed epochs of bytes (docs: results, "The budget,
checked"): the test accuracy of each run at its evaluation nearest the bytes (both ways) of each of plain split
learning's evaluations, and the best it reached.

    python experiments/budget_report.py results/cpu_protocol/extra

Prints the table (markdown) from ``none_budget10_seed0/`` and ``adc0.1_budget10_seed0/`` under the folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = {"none_budget10_seed0": "none", "adc0.1_budget10_seed0": "ADC, `xi` = 0.1"}


def evaluations(run: Path) -> list[tuple[float, float, float]]:
    """(MB sent both ways, test accuracy, epochs) of each evaluation of the run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [((r["bytes_up"] + r["bytes_down"]) / 1e6, r["val_acc"], r["epoch"]) for r in rows if r.get("val_acc") is not None]


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cpu_protocol/extra")
    evals = {label: evaluations(root / name) for name, label in RUNS.items()}
    points = [mb for mb, _, _ in evals["none"]]
    header = [f"{mb:,.0f} MB" for mb in points]
    header[0] += f" ({evals['none'][0][2]:g} epochs)"
    header[-1] += f" ({evals['none'][-1][2]:g} epochs)"
    lines = ["| bytes sent (both ways) | " + " | ".join(header) + " | best |", "| --- |" + " --: |" * (len(points) + 1)]
    for label, ev in evals.items():
        nearest = [min(ev, key=lambda e, mb=mb: abs(e[0] - mb)) for mb in points]
        lines.append(f"| {label} | " + " | ".join(f"{e[1]:.4f}" for e in nearest) + f" | {max(e[1] for e in ev):.4f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
